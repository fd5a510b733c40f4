//! Fault isolation: a guest that panics, loops forever or allocates without end takes
//! down only its own connection (close 1011); a parallel connection on the same host
//! keeps echoing, and new connections are served.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use wasmsocket_tests::{Host, STEP, components};

async fn next(
    client: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    tokio::time::timeout(STEP, client.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("valid message")
}

async fn misbehaviour_closes_only_its_connection(command: &str) {
    let mut host = Host::with_service(
        "/faulty",
        components::FAULTY,
        "[service.limits]\ncallback_timeout = 0.5\nmax_memory = 33554432",
    );
    let url = host.url("/faulty");
    let (mut bystander, _) = connect_async(&url).await.unwrap();
    let (mut victim, _) = connect_async(&url).await.unwrap();
    bystander.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut bystander).await, Message::text("before"));

    victim.send(Message::text(command)).await.unwrap();
    match next(&mut victim).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011, "{command}"),
        other => panic!("{command}: expected close 1011, got {other:?}"),
    }

    bystander.send(Message::text("after")).await.unwrap();
    assert_eq!(next(&mut bystander).await, Message::text("after"));
    let (mut newcomer, _) = connect_async(&url).await.unwrap();
    newcomer.send(Message::text("new")).await.unwrap();
    assert_eq!(next(&mut newcomer).await, Message::text("new"));
    assert!(host.is_running());
}

#[tokio::test]
async fn panic_closes_only_its_connection() {
    misbehaviour_closes_only_its_connection("panic").await;
}

#[tokio::test]
async fn infinite_loop_closes_only_its_connection() {
    misbehaviour_closes_only_its_connection("loop").await;
}

#[tokio::test]
async fn endless_allocation_closes_only_its_connection() {
    misbehaviour_closes_only_its_connection("alloc").await;
}
