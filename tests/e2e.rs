//! End to end: the real `wasmsocket` binary serving real components, driven by an
//! independent client (tokio-tungstenite) and by raw sockets where a client library
//! would refuse to misbehave.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wasmsocket_tests::{Client, Host, STEP, components, connect, next};

// Every component must have a test named after it.
macro_rules! assert_test_exists {
    ($name:ident) => {
        const _: fn() = $name;
    };
}
wasmsocket_tests::foreach_component!(assert_test_exists);

async fn expect_close(client: &mut Client) -> (u16, String) {
    loop {
        match next(client).await {
            Message::Close(Some(frame)) => return (frame.code.into(), frame.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Sends a raw HTTP request and returns the response (head and body) as text.
async fn raw_request(host: &Host, request: &str) -> String {
    let mut stream = TcpStream::connect(host.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(STEP, read_response(&mut stream))
        .await
        .expect("response in time")
}

/// Reads one response: the head, then `content-length` bytes of body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        response.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    response.extend_from_slice(&body);
    String::from_utf8_lossy(&response).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// A masked client frame (payload < 126 bytes).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server frame (payload < 126 bytes): (opcode, payload).
async fn server_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(STEP, stream.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = (head[1] & 0x7f) as usize;
    assert!(len < 126);
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// Opens a raw upgraded connection; returns the stream and the response head.
async fn raw_upgrade(host: &Host, path: &str, extra: &str, then: &[u8]) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(host.addr()).await.unwrap();
    let mut request = upgrade_request(path, extra).into_bytes();
    request.extend_from_slice(then);
    stream.write_all(&request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(STEP, stream.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

fn echo_host() -> Host {
    Host::with_service("/echo", components::ECHO, "")
}

/// Spec 6 (the echo sample) and 3.2.1 `onTextMessage`/`onBinaryMessage`, `onPing`
/// absent → automatic pong, close handshake with code and reason.
#[tokio::test]
async fn echo() {
    let host = echo_host();
    let mut client = connect(&host.url("/echo")).await;

    client.send(Message::text("hello, wasm")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("hello, wasm"));

    let blob: Vec<u8> = (0..=255).cycle().take(40_000).collect();
    client.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(blob));

    // Echo has no on_ping: the host answers.
    client
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    // Many messages in flight keep their order.
    for i in 0..200 {
        client.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..200 {
        assert_eq!(next(&mut client).await, Message::text(format!("m{i}")));
    }

    client
        .close(Some(CloseFrame {
            code: CloseCode::Library(4001),
            reason: "done here".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        expect_close(&mut client).await,
        (4001, "done here".to_owned())
    );
}

/// Spec 2 and 2.1 `requestLimits`: 404 off a service path, 426 for plain HTTP, 400
/// for a broken upgrade, 414 and 431 for oversized requests.
#[tokio::test]
async fn http_statuses() {
    let host = echo_host();
    let unknown = raw_request(&host, &upgrade_request("/nowhere", "")).await;
    assert_eq!(status_of(&unknown), 404, "{unknown}");

    let plain = raw_request(&host, "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status_of(&plain), 426, "{plain}");
    assert!(
        plain.to_ascii_lowercase().contains("upgrade: websocket"),
        "{plain}"
    );

    let bad_key = upgrade_request("/echo", "").replace(KEY, "not-a-nonce");
    assert_eq!(status_of(&raw_request(&host, &bad_key).await), 400);

    let no_connection =
        upgrade_request("/echo", "").replace("Connection: Upgrade", "Connection: close");
    assert_eq!(status_of(&raw_request(&host, &no_connection).await), 400);

    let post = upgrade_request("/echo", "").replace("GET", "POST");
    assert_eq!(status_of(&raw_request(&host, &post).await), 400);

    let old = raw_request(
        &host,
        &upgrade_request("/echo", "").replace("Version: 13", "Version: 8"),
    )
    .await;
    assert_eq!(status_of(&old), 426, "{old}");
    assert!(
        old.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{old}"
    );

    let garbage = raw_request(&host, "\x16\x03\x01\x02\x00hello\r\n\r\n").await;
    assert_eq!(status_of(&garbage), 400, "{garbage}");

    let long_uri = format!("/echo?{}", "q".repeat(5000));
    assert_eq!(
        status_of(&raw_request(&host, &upgrade_request(&long_uri, "")).await),
        414
    );

    let big_header = format!("X-Big: {}\r\n", "h".repeat(9000));
    assert_eq!(
        status_of(&raw_request(&host, &upgrade_request("/echo", &big_header)).await),
        431
    );

    // After all that, the service still works.
    let mut client = connect(&host.url("/echo")).await;
    client.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("still here"));
}

/// Spec 2.1 `webSocketCompressionEnabled` (on by default), RFC 6455 accept key, and
/// a frame sent right behind the upgrade request.
#[tokio::test]
async fn handshake_details() {
    let host = echo_host();
    // A browser's offer gets permessage-deflate with the browser's full window.
    let (_, head) = raw_upgrade(
        &host,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        b"",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate\r\n"),
        "{head}"
    );

    // No offer, no extension.
    let (_, head) = raw_upgrade(&host, "/echo", "", b"").await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");

    // A frame sent in the same packet as the upgrade request is not lost.
    let (mut stream, _) = raw_upgrade(&host, "/echo", "", &client_frame(0x1, b"early")).await;
    assert_eq!(server_frame(&mut stream).await, (0x1, b"early".to_vec()));
}

/// Spec 2.1 `webSocketCompressionEnabled = false`.
#[tokio::test]
async fn compression_can_be_switched_off() {
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\nweb_socket_compression_enabled = false\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        components::ECHO
    ));
    let (_, head) = raw_upgrade(
        &host,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        b"",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
}

/// Spec 3.1.1 `maxFrameSize` (1009), RFC 6455 invalid UTF-8 (1007) and reserved
/// opcodes (1002).
#[tokio::test]
async fn protocol_violations_close_with_the_right_code() {
    let host = Host::with_service("/echo", components::ECHO, "max_frame_size = 1000");
    // A frame over max_frame_size: 1009.
    let mut client = connect(&host.url("/echo")).await;
    client.send(Message::text("x".repeat(1001))).await.unwrap();
    assert_eq!(expect_close(&mut client).await.0, 1009);
    // Exactly max_frame_size is fine.
    let mut client = connect(&host.url("/echo")).await;
    client.send(Message::text("y".repeat(1000))).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("y".repeat(1000)));

    // Invalid UTF-8 in a text frame: 1007.
    let (mut stream, _) =
        raw_upgrade(&host, "/echo", "", &client_frame(0x1, &[0xce, 0xba, 0xff])).await;
    let (opcode, payload) = server_frame(&mut stream).await;
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1007);

    // A reserved opcode: a protocol error, 1002.
    let (mut stream, _) = raw_upgrade(&host, "/echo", "", &client_frame(0x3, b"")).await;
    let (opcode, payload) = server_frame(&mut stream).await;
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
}

fn faulty_host(extra: &str) -> Host {
    Host::with_service("/faulty", components::FAULTY, extra)
}

/// Spec 3.1 upgrade service (reject with `UpgradeError`, custom headers, chosen
/// subprotocol), 3.2.1 `onOpen`, `onPing` implemented, `onPong`, `websocket:Caller`
/// (id, isSecure, subprotocol, attributes, ping, close), callback errors → close codes.
#[tokio::test]
async fn faulty() {
    // The upgrade hook decides: reject with its status and message.
    let host = faulty_host("");
    let rejected = raw_request(&host, &upgrade_request("/faulty?upgrade=reject", "")).await;
    assert_eq!(status_of(&rejected), 403, "{rejected}");
    assert!(rejected.ends_with("not you"), "{rejected}");

    // A hook that panics, calls a caller function (there is no connection yet), or
    // answers with what the host must not send: 500. (`inject` tries a CRLF header
    // injection: the host refuses it.)
    for query in ["panic", "caller", "bad-header", "bad-protocol", "inject"] {
        let response = raw_request(
            &host,
            &upgrade_request(&format!("/faulty?upgrade={query}"), ""),
        )
        .await;
        assert_eq!(status_of(&response), 500, "{query}: {response}");
        assert!(!response.contains("pwned"), "{response}");
    }

    // Extra headers and a subprotocol chosen by the hook.
    let mut request = host.url("/faulty").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "other, faulty.v1".parse().unwrap(),
    );
    let (mut client, response) = connect_async(request).await.unwrap();
    assert_eq!(response.headers()["x-faulty"], "yes");
    assert_eq!(response.headers()["sec-websocket-protocol"], "faulty.v1");
    client.send(Message::text("info")).await.unwrap();
    let info = next(&mut client).await.into_text().unwrap();
    assert!(
        info.contains("secure=false subprotocol=faulty.v1 open=true"),
        "{info}"
    );
    assert!(
        info.starts_with("id=") && info.len() > "id= ".len(),
        "{info}"
    );

    // Attributes live as long as the connection.
    client
        .send(Message::text("attr colour blue"))
        .await
        .unwrap();
    client.send(Message::text("attr colour")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("blue"));
    client.send(Message::text("attr size")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("<none>"));

    // on_open ran first; the guest's ping reaches the client and its pong reaches
    // on_pong.
    client.send(Message::text("ping")).await.unwrap();
    loop {
        match next(&mut client).await {
            Message::Ping(data) => assert_eq!(&data[..], b"hello"),
            Message::Text(text) => {
                assert_eq!(text.as_str(), "got pong hello");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // This session implements on_ping: it answers, and the host does not answer too.
    client
        .send(Message::Ping(Bytes::from_static(b"knock")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::Pong(Bytes::from_static(b"knock"))
    );
    client.send(Message::text("events")).await.unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::text("open,pong:hello,ping:knock")
    );

    // The guest closes with its code and reason.
    client
        .send(Message::text("close 4321 see you"))
        .await
        .unwrap();
    assert_eq!(
        expect_close(&mut client).await,
        (4321, "see you".to_owned())
    );

    // A callback error ends the connection with the code it names.
    for (command, code) in [
        ("fail-unsupported", 1003),
        ("fail-close 4000", 4000),
        ("fail-close 1005", 1011), // not sendable: the host substitutes 1011
    ] {
        let mut client = connect(&host.url("/faulty")).await;
        client.send(Message::text(command)).await.unwrap();
        assert_eq!(expect_close(&mut client).await.0, code, "{command}");
    }

    // An invalid close code from the caller is refused, not sent.
    let mut client = connect(&host.url("/faulty")).await;
    client.send(Message::text("close 1006 nope")).await.unwrap();
    assert_eq!(expect_close(&mut client).await.0, 1011);
}

/// The host serves the browser front end: static files beside the services.
#[tokio::test]
async fn static_files() {
    let www = wasmsocket_tests::scratch_dir("www");
    std::fs::write(www.join("index.html"), "<h1>front end</h1>").unwrap();
    std::fs::create_dir_all(www.join("pkg")).unwrap();
    std::fs::write(www.join("pkg/app_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[static_files]\ndir = {:?}\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        www.display().to_string(),
        components::ECHO
    ));
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");

    let index = raw_request(&host, &get("/")).await;
    assert_eq!(status_of(&index), 200, "{index}");
    assert!(index.contains("content-type: text/html"), "{index}");
    assert!(index.ends_with("<h1>front end</h1>"), "{index}");

    let wasm = raw_request(&host, &get("/pkg/app_bg.wasm")).await;
    assert_eq!(status_of(&wasm), 200, "{wasm}");
    assert!(wasm.contains("content-type: application/wasm"), "{wasm}");

    for outside in ["/../Cargo.toml", "/%2e%2e/Cargo.toml", "/missing.js"] {
        assert_eq!(
            status_of(&raw_request(&host, &get(outside)).await),
            404,
            "{outside}"
        );
    }
    let post = raw_request(
        &host,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&post), 405, "{post}");
    // A WebSocket upgrade only ever reaches a service.
    assert_eq!(
        status_of(&raw_request(&host, &upgrade_request("/", "")).await),
        404
    );
    // Service paths still belong to the service.
    let plain = raw_request(&host, &get("/echo")).await;
    assert_eq!(status_of(&plain), 426, "{plain}");
    std::fs::remove_dir_all(&www).unwrap();
}

/// Spec 2 listener lifecycle: graceful stop on SIGTERM with 1001 Going Away.
#[tokio::test]
async fn graceful_stop_sends_going_away() {
    let mut host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\ngrace_period = 5\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        components::ECHO
    ));
    let mut first = connect(&host.url("/echo")).await;
    let mut second = connect(&host.url("/echo")).await;
    first.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut first).await, Message::text("before"));

    host.terminate();
    // Every open connection gets 1001 Going Away; answering it completes the handshake.
    for client in [&mut first, &mut second] {
        let (code, reason) = expect_close(client).await;
        assert_eq!(code, 1001);
        assert_eq!(reason, "server shutting down");
        // tokio-tungstenite sends its queued close reply on the next flush.
        let _ = client.flush().await;
    }
    // Both answered, so the host exits well before its 5 s grace period.
    let status = tokio::task::spawn_blocking(move || {
        let status = host.wait_exit(Duration::from_secs(4));
        (status, host)
    })
    .await
    .unwrap()
    .0
    .expect("host exited within the grace period");
    assert!(status.success(), "{status}");
}

/// Spec 2 listener lifecycle: the graceful stop is bounded by `grace_period`.
#[tokio::test]
async fn graceful_stop_ends_after_the_grace_period() {
    let mut host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\ngrace_period = 0.5\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        components::ECHO
    ));
    // A peer that never answers the close frame.
    let (_silent, head) = raw_upgrade(&host, "/echo", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    host.terminate();
    let status = tokio::task::spawn_blocking(move || host.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("host exited after its grace period");
    assert!(status.success(), "{status}");
}

/// Spec 3.2.1 `onMessage`: data binding to a record type, dispatch on a JSON field,
/// binary → string → JSON, and a binding failure closing with 1003.
#[tokio::test]
async fn json_echo() {
    let host = Host::with_service("/json", components::JSON_ECHO, "");
    let mut client = connect(&host.url("/json")).await;
    let json = |message: Message| -> serde_json::Value {
        serde_json::from_str(message.to_text().expect("a text answer")).expect("JSON")
    };

    client
        .send(Message::text(
            r#"{"type":"order","id":7,"item":"tea","quantity":2}"#,
        ))
        .await
        .unwrap();
    assert_eq!(
        json(next(&mut client).await),
        serde_json::json!({"type":"receipt","id":7,"item":"tea","quantity":2,"total_orders":1})
    );
    client
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(
        json(next(&mut client).await),
        serde_json::json!({"type":"pong","total_orders":1})
    );
    // A binary message binds through its text.
    client
        .send(Message::binary(
            br#"{"type":"order","id":8,"item":"cake","quantity":1}"#.to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(json(next(&mut client).await)["total_orders"], 2);

    // What does not bind closes the connection with 1003.
    for bad in [
        "not json",
        r#"{"type":"order","id":"x"}"#,
        r#"{"type":"refund"}"#,
    ] {
        let mut client = connect(&host.url("/json")).await;
        client.send(Message::text(bad)).await.unwrap();
        assert_eq!(expect_close(&mut client).await.0, 1003, "{bad}");
    }
}

/// Nothing arrives for `quiet`.
async fn assert_silent(client: &mut Client, quiet: Duration) {
    if let Ok(message) = tokio::time::timeout(quiet, client.next()).await {
        panic!("expected silence, got {message:?}");
    }
}

/// Returns once the connection's `on_open` has run: a ping is answered only after it.
async fn opened(client: &mut Client) {
    client
        .send(Message::Ping(b"opened?".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(client).await,
        Message::Pong(b"opened?".to_vec().into())
    );
}

fn chat_line(message: Message) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
    (
        value["from"].as_str().unwrap().to_owned(),
        value["text"].as_str().unwrap().to_owned(),
    )
}

/// Topics (the chat example): what one connection sends, every other connection in the room receives
/// (through the host's topics), and nobody else.
#[tokio::test]
async fn chat() {
    let host = Host::with_service("/chat", components::CHAT, "");
    let join = |name: &str, room: &str| host.url(&format!("/chat?room={room}&name={name}"));
    let line = |from: &str, text: &str| (from.to_owned(), text.to_owned());
    // `on_open` (which subscribes) runs after the 101, so the next one to join must
    // wait until it has: the engine reads (and answers a ping) only after `on_open`.
    let mut alice = connect(&join("alice", "tea")).await;
    opened(&mut alice).await;
    let mut bob = connect(&join("bob", "tea")).await;
    assert_eq!(
        chat_line(next(&mut alice).await),
        line("room", "bob joined")
    );
    let mut carol = connect(&join("carol", "tea")).await;
    assert_eq!(
        chat_line(next(&mut alice).await),
        line("room", "carol joined")
    );
    assert_eq!(
        chat_line(next(&mut bob).await),
        line("room", "carol joined")
    );
    let mut dave = connect(&join("dave", "coffee")).await;

    alice.send(Message::text("hello, tea room")).await.unwrap();
    assert_eq!(
        chat_line(next(&mut bob).await),
        line("alice", "hello, tea room")
    );
    assert_eq!(
        chat_line(next(&mut carol).await),
        line("alice", "hello, tea room")
    );
    // Not back to the sender, not to another room.
    assert_silent(&mut alice, Duration::from_millis(300)).await;
    assert_silent(&mut dave, Duration::from_millis(50)).await;

    // Leaving is announced, and the one who left gets nothing more.
    carol.close(None).await.unwrap();
    assert_eq!(
        chat_line(next(&mut alice).await),
        line("room", "carol left")
    );
    assert_eq!(chat_line(next(&mut bob).await), line("room", "carol left"));
    bob.send(Message::text("just us")).await.unwrap();
    assert_eq!(chat_line(next(&mut alice).await), line("bob", "just us"));

    let bad = raw_request(&host, &upgrade_request("/chat?room=no%20spaces", "")).await;
    assert_eq!(status_of(&bad), 400, "{bad}");
}

/// Spec 3.1.1 `idleTimeout` → `onIdleTimeout`, and timers (the ticker example):
/// messages pushed unasked, paused and resumed.
#[tokio::test]
async fn ticker() {
    let host = Host::with_service("/ticker", components::TICKER, "idle_timeout = 1.5");
    let mut client = connect(&host.url("/ticker?every=50")).await;
    for n in 1..=3 {
        assert_eq!(next(&mut client).await, Message::text(format!("tick {n}")));
    }
    client.send(Message::text("stop")).await.unwrap();
    let stopped_at: u64 = loop {
        let text = next(&mut client).await.into_text().unwrap();
        if let Some(tick) = text.strip_prefix("stopped at tick ") {
            break tick.parse().unwrap();
        }
        assert!(text.starts_with("tick "), "{text}");
    };
    assert!(stopped_at >= 3);
    assert_silent(&mut client, Duration::from_millis(200)).await;
    client.send(Message::text("start")).await.unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::text(format!("started at tick {stopped_at}"))
    );
    assert_eq!(
        next(&mut client).await,
        Message::text(format!("tick {}", stopped_at + 1))
    );

    // Sending nothing for idle_timeout: on_idle_timeout says so and closes with 1000.
    let mut quiet = connect(&host.url("/ticker?every=100000")).await;
    assert_eq!(next(&mut quiet).await, Message::text("idle: closing"));
    assert_eq!(
        expect_close(&mut quiet).await,
        (1000, "idle timeout".to_owned())
    );
}

/// Spec 3.1.1 `idleTimeout` counts from the last frame: a connection that keeps
/// talking for three times its idle timeout never hears `on_idle_timeout`, and hears it
/// once it falls silent.
#[tokio::test]
async fn idle_timeout_counts_from_the_last_frame() {
    let host = Host::with_service("/ticker", components::TICKER, "idle_timeout = 0.4");
    let mut client = connect(&host.url("/ticker?every=100000")).await;
    let talking = tokio::time::Instant::now();
    while talking.elapsed() < Duration::from_millis(1200) {
        client.send(Message::text("stop")).await.unwrap();
        assert_eq!(next(&mut client).await, Message::text("stopped at tick 0"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(next(&mut client).await, Message::text("idle: closing"));
    assert_eq!(
        expect_close(&mut client).await,
        (1000, "idle timeout".to_owned())
    );
}

/// Spec 2.1 `requestLimits.maxEntityBodySize`: a declared body over the limit gets 413.
#[tokio::test]
async fn entity_body_limit() {
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[listener.request_limits]\nmax_entity_body_size = 16\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        components::ECHO
    ));
    let big = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n";
    assert_eq!(status_of(&raw_request(&host, big).await), 413);
    let small = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n0123456789abcdef";
    assert_eq!(status_of(&raw_request(&host, small).await), 426);
}

/// Spec 2.1 `http1Settings`: plain requests before an upgrade share a kept-alive
/// connection, `Connection: close` and `keep_alive = "never"` end it, and pipelining
/// is bounded by `max_pipelined_requests`.
#[tokio::test]
async fn http1_keep_alive() {
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[listener.http1_settings]\nmax_pipelined_requests = 2\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        components::ECHO
    ));
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut stream = TcpStream::connect(host.addr()).await.unwrap();
    // Two requests, one after the other, on one connection; then an upgrade on it.
    stream.write_all(get("/nowhere").as_bytes()).await.unwrap();
    let first = read_response(&mut stream).await;
    assert_eq!(status_of(&first), 404);
    assert!(first.contains("connection: keep-alive"), "{first}");
    stream.write_all(get("/echo").as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 426);
    stream
        .write_all(upgrade_request("/echo", "").as_bytes())
        .await
        .unwrap();
    let upgraded = read_response(&mut stream).await;
    assert!(upgraded.starts_with("HTTP/1.1 101"), "{upgraded}");
    stream
        .write_all(&client_frame(0x1, b"same socket"))
        .await
        .unwrap();
    assert_eq!(
        server_frame(&mut stream).await,
        (0x1, b"same socket".to_vec())
    );

    // The client asks to close.
    let closing = raw_request(
        &host,
        "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(closing.contains("connection: close"), "{closing}");

    // Pipelined: three requests in one burst; with a limit of 2 the host answers two
    // and closes with the second answer, dropping the third.
    let mut stream = TcpStream::connect(host.addr()).await.unwrap();
    let three = format!("{}{}{}", get("/a"), get("/b"), get("/c"));
    stream.write_all(three.as_bytes()).await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.matches("HTTP/1.1 404").count(), 2, "{all}");
    assert!(all.ends_with("no service at this path"), "{all}");
    assert_eq!(all.matches("connection: close").count(), 1, "{all}");

    let never = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[listener.http1_settings]\nkeep_alive = \"never\"\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        components::ECHO
    ));
    let mut stream = TcpStream::connect(never.addr()).await.unwrap();
    stream.write_all(get("/nowhere").as_bytes()).await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert!(all.contains("connection: close"), "{all}");
}

/// Frames a client sends in the same write as its upgrade request (read with the
/// request, before the WebSocket starts) reach the service in order, and so do the
/// ones after them.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request() {
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
        components::ECHO
    ));
    let mut stream = TcpStream::connect(host.addr()).await.unwrap();
    let mut burst = upgrade_request("/echo", "").into_bytes();
    burst.extend_from_slice(&client_frame(0x1, b"first"));
    burst.extend_from_slice(&client_frame(0x2, b"second"));
    // Half a frame: the rest comes in a later write.
    let third = client_frame(0x1, b"third");
    burst.extend_from_slice(&third[..4]);
    stream.write_all(&burst).await.unwrap();
    let upgraded = read_response(&mut stream).await;
    assert!(upgraded.starts_with("HTTP/1.1 101"), "{upgraded}");
    assert_eq!(server_frame(&mut stream).await, (0x1, b"first".to_vec()));
    assert_eq!(server_frame(&mut stream).await, (0x2, b"second".to_vec()));
    stream.write_all(&third[4..]).await.unwrap();
    assert_eq!(server_frame(&mut stream).await, (0x1, b"third".to_vec()));
    stream
        .write_all(&client_frame(0x1, b"later"))
        .await
        .unwrap();
    assert_eq!(server_frame(&mut stream).await, (0x1, b"later".to_vec()));
}

/// Spec 3.2.1: a remote function's returned value is sent back, after what the
/// function wrote through the caller; a returned close frame closes.
#[tokio::test]
async fn replies_by_return_value() {
    let host = faulty_host("");
    let mut client = connect(&host.url("/faulty")).await;
    client
        .send(Message::text("reply hello there"))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await, Message::text("hello there"));
    client
        .send(Message::text("write-then-reply written returned"))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await, Message::text("written"));
    assert_eq!(next(&mut client).await, Message::text("returned"));
    client
        .send(Message::text("reply-close 4100 done with you"))
        .await
        .unwrap();
    assert_eq!(
        expect_close(&mut client).await,
        (4100, "done with you".to_owned())
    );
}

/// A returned reply counts against `max_write_buffer` with what the callback wrote:
/// past it, what was written goes out and the connection closes with 1011, as when a
/// write through the caller fails.
#[tokio::test]
async fn a_reply_past_the_write_buffer_closes_with_1011() {
    let host = faulty_host("[service.limits]\nmax_write_buffer = 64");
    let mut client = connect(&host.url("/faulty")).await;
    client
        .send(Message::text("write-then-reply 0123456789 short"))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await, Message::text("0123456789"));
    assert_eq!(next(&mut client).await, Message::text("short"));
    // 40 bytes written, then a 40-byte reply: 80 > 64.
    let forty = "x".repeat(40);
    client
        .send(Message::text(format!("write-then-reply {forty} {forty}")))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await, Message::text(forty));
    assert_eq!(
        expect_close(&mut client).await,
        (1011, "write buffer full".to_owned())
    );
}

/// Spec 3.2.1 `onClose` and `onError`: the session hears the peer's close frame (code
/// and reason), an abnormal drop (1006), and a protocol failure after the host's close
/// frame. The faulty component reports them on a topic a watcher subscribes to.
#[tokio::test]
async fn on_close_and_on_error() {
    let host = faulty_host("max_frame_size = 100");
    let mut watcher = connect(&host.url("/faulty")).await;
    watcher.send(Message::text("watch")).await.unwrap();
    assert_eq!(next(&mut watcher).await, Message::text("watching"));

    let mut polite = connect(&host.url("/faulty")).await;
    polite
        .close(Some(CloseFrame {
            code: CloseCode::Library(4005),
            reason: "bye bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        next(&mut watcher).await,
        Message::text("on_close 4005 bye bye")
    );

    let rude = connect(&host.url("/faulty")).await;
    drop(rude);
    assert_eq!(next(&mut watcher).await, Message::text("on_close 1006 "));

    // Too large a frame: the client gets 1009 first, then the session's on_error runs.
    let mut oversized = connect(&host.url("/faulty")).await;
    oversized
        .send(Message::text("x".repeat(101)))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut oversized).await.0, 1009);
    let report = next(&mut watcher).await.into_text().unwrap();
    assert!(report.starts_with("on_error "), "{report}");
}

/// Spec 2.1 `timeout` and `server`: a request that does not arrive in time gets 408;
/// every response names the server.
#[tokio::test]
async fn listener_timeout_and_server_header() {
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\ntimeout = 0.3\nserver = \"wasmsocket-test\"\n\n\
         [[service]]\npath = \"/echo\"\ncomponent = {:?}\nsubprotocols = [\"chat.v2\", \"chat.v1\"]\n",
        components::ECHO
    ));
    let mut slow = TcpStream::connect(host.addr()).await.unwrap();
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let response = tokio::time::timeout(STEP, read_response(&mut slow))
        .await
        .unwrap();
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(response.contains("server: wasmsocket-test"), "{response}");

    // Spec 3.1.1 `subProtocols`: the component chooses none, so the host agrees on
    // the first the client offered among the configured ones.
    let (_, head) = raw_upgrade(
        &host,
        "/echo",
        "Sec-WebSocket-Protocol: x, chat.v1, chat.v2\r\n",
        b"",
    )
    .await;
    assert!(
        head.contains("sec-websocket-protocol: chat.v1\r\n"),
        "{head}"
    );
    assert!(head.contains("server: wasmsocket-test\r\n"), "{head}");
    let (_, head) = raw_upgrade(&host, "/echo", "Sec-WebSocket-Protocol: x\r\n", b"").await;
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
}

/// Spec 3.1.1 `idleTimeout`: without an `onIdleTimeout` that closes, the connection
/// stays open past the timeout.
#[tokio::test]
async fn idle_timeout_keeps_the_connection_open() {
    let host = Host::with_service("/echo", components::ECHO, "idle_timeout = 0.2");
    let mut client = connect(&host.url("/echo")).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.send(Message::text("still open")).await.unwrap();
    assert_eq!(next(&mut client).await, Message::text("still open"));
}

/// The sandbox (issue 5): without grants a guest sees no environment, no files and no
/// network; `[service.grants]` gives exactly the variables and directories listed,
/// read-only unless marked writable.
#[tokio::test]
async fn sandbox_grants() {
    async fn ask(client: &mut Client, command: String) -> String {
        client.send(Message::text(command)).await.unwrap();
        next(client).await.into_text().unwrap().to_string()
    }
    let closed = faulty_host("");
    let mut client = connect(&closed.url("/faulty")).await;
    assert_eq!(ask(&mut client, "env HOME".into()).await, "<unset>");
    assert!(
        ask(&mut client, "read /etc/hostname".into())
            .await
            .starts_with("<denied")
    );
    // Randomness is always there, and fresh on every call.
    let first = ask(&mut client, "random".into()).await;
    let second = ask(&mut client, "random".into()).await;
    assert_eq!(first.len(), 32, "{first}");
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert_ne!(first, second);
    assert_ne!(first, "0".repeat(32));
    let address = closed.addr().to_string();
    assert!(
        ask(&mut client, format!("connect {address}"))
            .await
            .starts_with("<denied")
    );

    let data = wasmsocket_tests::scratch_dir("grants");
    std::fs::write(data.join("motd.txt"), "granted file").unwrap();
    let open = faulty_host(&format!(
        "[service.grants]\nenv = {{ GREETING = \"hello\" }}\ndirs = [{{ host = {:?}, guest = \"/data\" }}]\n",
        data.display().to_string()
    ));
    let mut client = connect(&open.url("/faulty")).await;
    assert_eq!(ask(&mut client, "env GREETING".into()).await, "hello");
    assert_eq!(ask(&mut client, "env HOME".into()).await, "<unset>");
    assert_eq!(
        ask(&mut client, "read /data/motd.txt".into()).await,
        "granted file"
    );
    assert!(
        ask(&mut client, "write /data/new.txt".into())
            .await
            .starts_with("<denied")
    );
    assert!(!data.join("new.txt").exists());
    assert!(
        ask(&mut client, "read /data/../../etc/hostname".into())
            .await
            .starts_with("<denied")
    );
    assert!(
        ask(&mut client, format!("connect {address}"))
            .await
            .starts_with("<denied")
    );
}
