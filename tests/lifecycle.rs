//! The listener's lifecycle through the library API (Ballerina's `attach`, `detach`,
//! `gracefulStop`, `immediateStop`), with real components and a third-party client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wasmsocket_host::{Config, Server, ServiceConfig};
use wasmsocket_tests::{STEP, components};

async fn bind() -> (Server, String) {
    let config =
        Config::parse("[listener]\nhost = \"127.0.0.1\"\nport = 0\ngrace_period = 2\n").unwrap();
    let server = Server::bind(config).await.unwrap();
    let base = format!("ws://{}", server.local_addr());
    (server, base)
}

async fn status_of_refusal(url: &str) -> u16 {
    match connect_async(url).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        other => panic!(
            "expected an HTTP refusal, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
}

#[tokio::test]
async fn attach_and_detach_while_serving() {
    let (server, base) = bind().await;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());
    let url = format!("{base}/echo");
    assert_eq!(status_of_refusal(&url).await, 404);

    handle
        .attach(ServiceConfig::new("/echo", components::ECHO))
        .await
        .unwrap();
    assert!(handle.is_attached("/echo"));
    let (mut open, _) = connect_async(&url).await.unwrap();
    open.send(Message::text("attached")).await.unwrap();
    assert_eq!(
        open.next().await.unwrap().unwrap(),
        Message::text("attached")
    );
    // The path is taken; a bad component is a clear error.
    assert!(
        handle
            .attach(ServiceConfig::new("/echo", components::ECHO))
            .await
            .is_err()
    );
    let error = handle
        .attach(ServiceConfig::new("/other", "/nonexistent.wasm"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("/nonexistent.wasm"), "{error}");

    // Detached: new upgrades get 404, the open connection keeps its session.
    assert!(handle.detach("/echo"));
    assert!(!handle.detach("/echo"));
    assert_eq!(status_of_refusal(&url).await, 404);
    open.send(Message::text("still served")).await.unwrap();
    assert_eq!(
        open.next().await.unwrap().unwrap(),
        Message::text("still served")
    );

    // A graceful stop closes it with 1001 and returns.
    handle.graceful_stop();
    match tokio::time::timeout(STEP, open.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let _ = open.flush().await;
    tokio::time::timeout(STEP, serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn immediate_stop_drops_connections() {
    let (server, base) = bind().await;
    let handle = server.handle();
    handle
        .attach(ServiceConfig::new("/echo", components::ECHO))
        .await
        .unwrap();
    let serving = tokio::spawn(server.serve());
    let (mut open, _) = connect_async(format!("{base}/echo")).await.unwrap();
    open.send(Message::text("hi")).await.unwrap();
    assert_eq!(open.next().await.unwrap().unwrap(), Message::text("hi"));

    handle.immediate_stop();
    // No close frame: the connection just ends.
    match tokio::time::timeout(STEP, open.next()).await.unwrap() {
        None | Some(Err(_)) => {}
        other => panic!("expected the connection to drop, got {other:?}"),
    }
    // Well under the 2 s grace period.
    tokio::time::timeout(Duration::from_secs(1), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A config serving the faulty component at `/faulty`, granted `dir` as `/data`.
fn granted(dir: &std::path::Path) -> Config {
    Config::parse(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
         [[service]]\npath = \"/faulty\"\ncomponent = {:?}\n\
         [service.grants]\ndirs = [{{ host = {:?}, guest = \"/data\" }}]\n",
        components::FAULTY,
        dir
    ))
    .unwrap()
}

/// A guest granted directories blocks its thread on file operations, which only
/// tokio's multi-thread runtime allows: on a current-thread runtime (this test's)
/// the service is refused at once with a clear error, not a panic at its first file
/// operation.
#[tokio::test]
async fn granted_directories_need_the_multi_thread_runtime() {
    let config = granted(&wasmsocket_tests::scratch_dir("grants"));
    let error = Server::bind(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("multi-thread runtime"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_directories_work_on_the_multi_thread_runtime() {
    let dir = wasmsocket_tests::scratch_dir("grants");
    std::fs::write(dir.join("motd.txt"), "granted").unwrap();
    let server = Server::bind(granted(&dir)).await.unwrap();
    let url = format!("ws://{}/faulty", server.local_addr());
    let serving = tokio::spawn(server.serve());
    let (mut client, _) = connect_async(&url).await.unwrap();
    client
        .send(Message::text("read /data/motd.txt"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(STEP, client.next()).await.unwrap();
    assert_eq!(reply.unwrap().unwrap(), Message::text("granted"));
    serving.abort();
}
