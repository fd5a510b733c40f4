//! The `wasmsocket` command line: help, and clear errors for bad input.

use std::process::Command;

fn wasmsocket(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmsocket"))
        .args(args)
        .output()
        .expect("run wasmsocket");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmsocket-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wasmsocket.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn help_lists_the_commands() {
    let (ok, text) = wasmsocket(&["--help"]);
    assert!(ok);
    assert!(text.contains("serve") && text.contains("check"), "{text}");
}

#[test]
fn bad_config_names_the_field() {
    let file = config_file(
        "bad",
        "[listener]\nport = 1\n[[service]]\npath = \"echo\"\ncomponent = \"x.wasm\"\n",
    );
    let (ok, text) = wasmsocket(&["check", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("service[0].path"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn missing_component_is_a_clear_error() {
    let file = config_file(
        "missing",
        "[listener]\nport = 0\n[[service]]\npath = \"/echo\"\ncomponent = \"missing.wasm\"\n",
    );
    let (ok, text) = wasmsocket(&["serve", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("missing.wasm") && text.contains("/echo"),
        "{text}"
    );
}

#[test]
fn not_a_component_is_a_clear_error() {
    let file = config_file(
        "garbage",
        "[listener]\nport = 0\n[[service]]\npath = \"/echo\"\ncomponent = \"garbage.wasm\"\n",
    );
    std::fs::write(file.with_file_name("garbage.wasm"), b"not wasm at all").unwrap();
    let (ok, text) = wasmsocket(&["check", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("garbage.wasm"), "{text}");
}
