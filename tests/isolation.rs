//! Fault isolation: a guest that panics, loops forever or allocates without end takes
//! down only its own connection (close 1011); a parallel connection on the same host
//! keeps echoing, and new connections are served. In shared mode a trap takes down
//! the connections of its instance only.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use wasmsocket_tests::{Host, STEP, components, next};

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

/// A guest that keeps running holds up no other connection while it runs: once its
/// callback has run for more than an epoch tick, the other connections of its worker
/// thread move to another thread. With one worker thread the bystander would
/// otherwise get no reply until the loop's deadline (5 s) closed the victim.
#[tokio::test]
async fn a_looping_guest_holds_up_no_other_connection() {
    let mut host = Host::start_under(
        "export TOKIO_WORKER_THREADS=1",
        &format!(
            "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
             [[service]]\npath = \"/faulty\"\ncomponent = {:?}\n\
             [service.limits]\ncallback_timeout = 5\n",
            components::FAULTY
        ),
    );
    let url = host.url("/faulty");
    let (mut bystander, _) = connect_async(&url).await.unwrap();
    let (mut victim, _) = connect_async(&url).await.unwrap();
    victim.send(Message::text("loop")).await.unwrap();
    // Give the loop time to start (the echoes below would otherwise race it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for index in 0..20 {
        bystander
            .send(Message::text(index.to_string()))
            .await
            .unwrap();
        assert_eq!(next(&mut bystander).await, Message::text(index.to_string()));
    }
    // The victim's callback is still running: its close has not been sent yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), victim.next())
            .await
            .is_err(),
        "the bystander was answered only after the loop ended"
    );
    match next(&mut victim).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011),
        other => panic!("expected close 1011, got {other:?}"),
    }
    assert!(host.is_running());
}

/// Shared mode: the sessions of many connections live in one instance. They keep
/// their own state, and a trap closes every connection of that instance with 1011 —
/// and only those: another instance's connections keep going, and a fresh instance
/// serves newcomers.
async fn shared_instance_trap_closes_its_connections(command: &str) {
    let mut host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
         [[service]]\npath = \"/shared\"\ncomponent = {c:?}\nmode = \"shared\"\nshared_instances = 1\n\
         [service.limits]\ncallback_timeout = 0.5\nmax_memory = 33554432\n\n\
         [[service]]\npath = \"/other\"\ncomponent = {c:?}\nmode = \"shared\"\nshared_instances = 1\n",
        c = components::FAULTY
    ));
    let url = host.url("/shared");
    let mut clients = Vec::new();
    for index in 0..5 {
        let (mut client, _) = connect_async(&url).await.unwrap();
        client
            .send(Message::text(format!("attr who {index}")))
            .await
            .unwrap();
        clients.push(client);
    }
    // One instance, five sessions, five callers: each sees its own attribute.
    for (index, client) in clients.iter_mut().enumerate() {
        client.send(Message::text("attr who")).await.unwrap();
        assert_eq!(next(client).await, Message::text(index.to_string()));
    }
    let (mut elsewhere, _) = connect_async(host.url("/other")).await.unwrap();

    clients[0].send(Message::text(command)).await.unwrap();
    for client in &mut clients {
        match next(client).await {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011, "{command}"),
            other => panic!("{command}: expected close 1011, got {other:?}"),
        }
    }

    elsewhere.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut elsewhere).await, Message::text("still here"));
    let (mut newcomer, _) = connect_async(&url).await.unwrap();
    newcomer.send(Message::text("attr who")).await.unwrap();
    assert_eq!(
        next(&mut newcomer).await,
        Message::text("<none>"),
        "a fresh instance, not the trapped one"
    );
    newcomer.send(Message::text("new")).await.unwrap();
    assert_eq!(next(&mut newcomer).await, Message::text("new"));
    assert!(host.is_running());
}

#[tokio::test]
async fn shared_instance_panic_closes_its_connections() {
    shared_instance_trap_closes_its_connections("panic").await;
}

#[tokio::test]
async fn shared_instance_infinite_loop_closes_its_connections() {
    shared_instance_trap_closes_its_connections("loop").await;
}

/// Shared mode ends each session when its connection ends: the guest's destructor
/// runs (the component counts its live sessions) and the host forgets the caller. So
/// does an upgrade the guest accepted but the host then refused.
#[tokio::test]
async fn shared_instance_sessions_end_with_their_connections() {
    let host = Host::with_service(
        "/shared",
        components::FAULTY,
        "mode = \"shared\"\nshared_instances = 1",
    );
    let url = host.url("/shared");
    let (mut long_lived, _) = connect_async(&url).await.unwrap();
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(connect_async(&url).await.unwrap().0);
    }
    long_lived.send(Message::text("live")).await.unwrap();
    assert_eq!(next(&mut long_lived).await, Message::text("21"));
    for mut client in others {
        client.close(None).await.unwrap();
        while let Some(Ok(_)) = client.next().await {}
    }
    // The host ends a session once its close handshake is over.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        long_lived.send(Message::text("live")).await.unwrap();
        if next(&mut long_lived).await == Message::text("1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions outlived their connections"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The hook accepts with a response header, or a subprotocol, the host refuses.
    for query in ["bad-header", "bad-protocol"] {
        let refused = connect_async(format!("{url}?upgrade={query}")).await;
        assert!(refused.is_err(), "{query}: {refused:?}");
    }
    long_lived.send(Message::text("live")).await.unwrap();
    assert_eq!(
        next(&mut long_lived).await,
        Message::text("1"),
        "refused upgrades left sessions behind"
    );
}

/// An isolated connection needs its own linear memory. When the host cannot map
/// another (here: its address space is capped), the upgrade gets 503 with
/// `retry-after` — not a guest error — the connections already open keep working, and
/// a freed slot is usable again.
#[tokio::test]
async fn out_of_memory_for_instances_is_503() {
    // Each instance reserves 4 GiB of address space for its linear memory; 48 GiB
    // holds a handful.
    let host = Host::start_under(
        "ulimit -v 50331648",
        &format!(
            "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
            components::ECHO
        ),
    );
    let url = host.url("/echo");
    let mut open = Vec::new();
    let refusal = loop {
        assert!(open.len() < 64, "the address space cap never bit");
        match connect_async(&url).await {
            Ok((client, _)) => open.push(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => break response,
            Err(other) => panic!("unexpected {other}"),
        }
    };
    assert_eq!(refusal.status().as_u16(), 503);
    assert_eq!(refusal.headers()["retry-after"], "1");
    assert!(!open.is_empty(), "no instance at all fit");
    let first = &mut open[0];
    first.send(Message::text("still")).await.unwrap();
    assert_eq!(next(first).await, Message::text("still"));

    // Closing one frees its memory for the next.
    let mut last = open.pop().unwrap();
    last.close(None).await.unwrap();
    while let Some(Ok(_)) = last.next().await {}
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if connect_async(&url).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot was not reused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What one connection's guest leaves in its linear memory never reaches the next
/// connection's guest: the host reuses the memories of ended connections, cleared.
#[tokio::test]
async fn a_reused_memory_holds_nothing_of_the_last_connection() {
    let host = Host::with_service("/faulty", components::FAULTY, "");
    let url = host.url("/faulty");
    for round in 0..5 {
        let (mut first, _) = connect_async(&url).await.unwrap();
        first.send(Message::text("stash")).await.unwrap();
        assert_eq!(next(&mut first).await, Message::text("stashed"));
        // The scan sees what this instance stashed: it can tell.
        first.send(Message::text("scan")).await.unwrap();
        let seen: usize = next(&mut first).await.to_text().unwrap().parse().unwrap();
        assert!(
            seen >= 16 * 1024,
            "round {round}: the scan missed the stash ({seen})"
        );
        first.close(None).await.unwrap();
        while first.next().await.is_some() {}
        // Let the host drop the ended connection's instance.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;

        let (mut second, _) = connect_async(&url).await.unwrap();
        second.send(Message::text("scan")).await.unwrap();
        let left: usize = next(&mut second).await.to_text().unwrap().parse().unwrap();
        assert!(
            left < 1024,
            "round {round}: a new connection's memory holds {left} marker bytes"
        );
    }
}
