//! Builds every guest component (`guest/examples/*`, `tests/components/*`) for
//! `wasm32-wasip2` and writes their paths, plus a `foreach_component!` macro, to
//! `$OUT_DIR/components.rs`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_owned();
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: keep the components in
    // a stable directory beside it so they survive changes to this crate.
    let target = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR layout")
        .join("wasm-components");

    let mut names = Vec::new();
    for dir in ["guest/examples", "tests/components"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("component directory") {
            let path = entry.expect("directory entry").path();
            if path.join("Cargo.toml").exists() {
                names.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    names.sort();
    for watched in [
        "wit",
        "guest/src",
        "guest/macro/src",
        "guest/Cargo.toml",
        // The `guest` profile the components are built with.
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "guest",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target);
    for name in &names {
        command.args(["-p", name]);
    }
    // Flags meant for this native build (coverage, sanitizers, clippy) must not leak
    // into the wasm one.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .expect("run cargo for the guest components");
    assert!(
        status.success(),
        "building the guest components failed; is the target installed? \
         (rustup target add wasm32-wasip2)"
    );

    let mut code = String::new();
    for name in &names {
        let file = target
            .join("wasm32-wasip2/guest")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
        code.push_str(&format!(
            "/// The `{name}` component.\npub const {}: &str = {:?};\n",
            name.to_uppercase().replace('-', "_"),
            file.display().to_string()
        ));
    }
    code.push_str("/// Calls `$mac!(name)` for every component.\n#[macro_export]\nmacro_rules! foreach_component {\n    ($mac:ident) => {\n");
    for name in &names {
        code.push_str(&format!("        $mac!({});\n", name.replace('-', "_")));
    }
    code.push_str("    };\n}\n");
    std::fs::write(out_dir.join("components.rs"), code).expect("write components.rs");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by cargo"))
}
