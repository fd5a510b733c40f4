//! Reloading components while serving (operations): a changed component file, or
//! `SIGHUP`, loads the new component for new connections while open connections
//! finish on the old one; a file that does not compile leaves the old one serving.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use wasmsocket_tests::{Client, Host, STEP, components, scratch_dir};

/// Replaces `target` with `source`'s bytes in one step (write, then rename), as a
/// deployment would.
fn install(source: &[u8], target: &Path) {
    let staging = target.with_extension("staging");
    std::fs::write(&staging, source).unwrap();
    std::fs::rename(&staging, target).unwrap();
}

async fn ask(client: &mut Client, text: &str) -> String {
    client.send(Message::text(text)).await.unwrap();
    match tokio::time::timeout(STEP, client.next()).await {
        Ok(Some(Ok(Message::Text(reply)))) => reply.to_string(),
        other => panic!("no text reply: {other:?}"),
    }
}

/// Whether a new connection is served by the faulty component (which answers
/// `info` with the connection's details) rather than the echo component.
async fn new_connections_run_faulty(url: &str) -> bool {
    let (mut client, _) = connect_async(url).await.unwrap();
    ask(&mut client, "info").await.starts_with("id=")
}

async fn wait_until_faulty(url: &str) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !new_connections_run_faulty(url).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new component was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn host(dir: &Path, watch: bool) -> Host {
    let file = dir.join("service.wasm");
    install(&std::fs::read(components::ECHO).unwrap(), &file);
    Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\nwatch_components = {watch}\n\n\
         [[service]]\npath = \"/svc\"\ncomponent = {file:?}\n"
    ))
}

#[tokio::test]
async fn a_changed_component_file_serves_new_connections() {
    let dir = scratch_dir("reload-watch");
    let host = host(&dir, true);
    let url = host.url("/svc");
    let (mut old, _) = connect_async(&url).await.unwrap();
    assert_eq!(ask(&mut old, "info").await, "info", "echo at first");

    install(
        &std::fs::read(components::FAULTY).unwrap(),
        &dir.join("service.wasm"),
    );
    wait_until_faulty(&url).await;
    assert_eq!(
        ask(&mut old, "info").await,
        "info",
        "an open connection keeps its component"
    );

    // A broken file: logged, and the last good component keeps serving.
    install(b"not a component", &dir.join("service.wasm"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(new_connections_run_faulty(&url).await);
    assert_eq!(ask(&mut old, "still").await, "still");
}

#[tokio::test]
async fn sighup_reloads_components() {
    let dir = scratch_dir("reload-hup");
    let host = host(&dir, false);
    let url = host.url("/svc");
    install(
        &std::fs::read(components::FAULTY).unwrap(),
        &dir.join("service.wasm"),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !new_connections_run_faulty(&url).await,
        "watch_components = false: no reload without SIGHUP"
    );
    host.signal("HUP");
    wait_until_faulty(&url).await;
}
