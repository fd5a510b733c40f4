//! The client's behaviour, the same tests natively and in headless Chromium, against
//! the real host serving the echo component (`/echo`) and the faulty test component
//! (`/faulty`).
//!
//! Natively each test starts its own host. In the browser the host is started by
//! `test.sh`, which passes its address in `WASMSOCKET_TEST_URL` at build time.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmsocket_client::{Client, ClientConfig, Error, Message, RetryConfig, Xml};

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// The host under test.
struct Server {
    #[cfg(not(target_arch = "wasm32"))]
    host: wasmsocket_tests::Host,
}

impl Server {
    #[cfg(not(target_arch = "wasm32"))]
    fn start() -> Self {
        use wasmsocket_tests::components;
        let host = wasmsocket_tests::Host::start(&format!(
            "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
             [[service]]\npath = \"/echo\"\ncomponent = {:?}\n\n\
             [[service]]\npath = \"/faulty\"\ncomponent = {:?}\n",
            components::ECHO,
            components::FAULTY
        ));
        Self { host }
    }

    #[cfg(target_arch = "wasm32")]
    fn start() -> Self {
        Self {}
    }

    fn url(&self, path: &str) -> String {
        #[cfg(not(target_arch = "wasm32"))]
        return self.host.url(path);
        #[cfg(target_arch = "wasm32")]
        return format!(
            "{}{path}",
            env!(
                "WASMSOCKET_TEST_URL",
                "test.sh sets the ws:// address of the test host"
            )
        );
    }
}

fn now_ms() -> u128 {
    #[cfg(not(target_arch = "wasm32"))]
    return std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    #[cfg(target_arch = "wasm32")]
    return js_sys::Date::now() as u128;
}

/// Declares each test for both targets.
macro_rules! behaviour {
    ($($(#[$meta:meta])* async fn $name:ident($server:ident) $body:block)*) => {$(
        $(#[$meta])*
        #[cfg_attr(not(target_arch = "wasm32"), tokio::test)]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        async fn $name() {
            let $server = Server::start();
            $body
        }
    )*};
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Command {
    Move { to: Point },
    Stop,
}

async fn echo(server: &Server) -> Client {
    Client::connect(&server.url("/echo"), ClientConfig::default())
        .await
        .expect("connect to /echo")
}

behaviour! {
    async fn text_round_trip(server) {
        let mut client = echo(&server).await;
        client.write_text("Text message").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "Text message");
        client.write_text("ünïcödé ✓").await.unwrap();
        assert_eq!(client.read().await.unwrap(), Message::Text("ünïcödé ✓".into()));
    }

    async fn binary_round_trip(server) {
        let mut client = echo(&server).await;
        let data: Vec<u8> = (0..=255).collect();
        client.write_binary(&data).await.unwrap();
        assert_eq!(client.read_binary().await.unwrap(), data);
        // A message of the other kind is an error naming both kinds.
        client.write_binary(b"bytes").await.unwrap();
        match client.read_text().await {
            Err(Error::UnexpectedMessage { expected: "text", got: "binary" }) => {}
            other => panic!("expected UnexpectedMessage, got {other:?}"),
        }
    }

    async fn json_binding(server) {
        let mut client = echo(&server).await;
        client.write_message(&Point { x: 1, y: 2 }).await.unwrap();
        assert_eq!(client.read_message::<Point>().await.unwrap(), Point { x: 1, y: 2 });
        client.write_message(&Command::Move { to: Point { x: 3, y: 4 } }).await.unwrap();
        assert_eq!(
            client.read_message::<Command>().await.unwrap(),
            Command::Move { to: Point { x: 3, y: 4 } }
        );
        // A string goes as it is, not as a JSON string.
        client.write_message("plain").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "plain");
        // Binary binds through its text.
        client.write_binary(br#"{"x":5,"y":6}"#).await.unwrap();
        assert_eq!(client.read_message::<Point>().await.unwrap(), Point { x: 5, y: 6 });
    }

    async fn xml_binding(server) {
        let mut client = echo(&server).await;
        client.write_message(&Xml(Point { x: 7, y: 8 })).await.unwrap();
        let Xml(point) = client.read_message::<Xml<Point>>().await.unwrap();
        assert_eq!(point, Point { x: 7, y: 8 });
    }

    async fn binding_failure(server) {
        let mut client = echo(&server).await;
        client.write_text("{\"x\": \"not a number\"}").await.unwrap();
        assert!(matches!(client.read_message::<Point>().await, Err(Error::Binding(_))));
        // The connection is still usable.
        client.write_text("after").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "after");
    }

    async fn read_timeout(server) {
        let config = ClientConfig::default().read_timeout(Duration::from_millis(300));
        let mut client = Client::connect(&server.url("/echo"), config).await.unwrap();
        assert!(matches!(client.read().await, Err(Error::ReadTimeout)));
        client.write_text("still open").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "still open");
    }

    async fn close_handshake(server) {
        let mut client = echo(&server).await;
        let peer = client.close(4000, "bye now", Duration::from_secs(5)).await.unwrap();
        assert_eq!(peer, (4000, "bye now".to_owned()));
        match client.write_text("too late").await {
            Err(Error::ConnectionClosed { code: 4000, .. }) => {}
            other => panic!("expected ConnectionClosed, got {other:?}"),
        }
    }

    async fn server_close_is_reported(server) {
        let mut client = Client::connect(&server.url("/faulty"), ClientConfig::default()).await.unwrap();
        client.write_text("close 4321 server says bye").await.unwrap();
        match client.read().await {
            Err(Error::ConnectionClosed { code: 4321, reason }) => assert_eq!(reason, "server says bye"),
            other => panic!("expected ConnectionClosed 4321, got {other:?}"),
        }
    }

    async fn subprotocol_negotiation(server) {
        let config = ClientConfig::default().subprotocols(["other", "faulty.v1"]);
        let client = Client::connect(&server.url("/faulty"), config).await.unwrap();
        assert_eq!(client.negotiated_subprotocol(), Some("faulty.v1"));
        let plain = Client::connect(&server.url("/faulty"), ClientConfig::default()).await.unwrap();
        assert_eq!(plain.negotiated_subprotocol(), None);
    }

    async fn retry_until_the_server_is_back(server) {
        // The service refuses upgrades (503) until `until`.
        let until = now_ms() + 1500;
        let url = server.url(&format!("/faulty?until={until}"));
        assert!(Client::connect(&url, ClientConfig::default()).await.is_err());
        let config = ClientConfig::default().retry(RetryConfig::new(30, Duration::from_millis(200)));
        let mut client = Client::connect(&url, config).await.expect("connected after retries");
        assert!(now_ms() >= until);
        client.write_text("back").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "back");
    }
}

#[cfg(target_arch = "wasm32")]
mod browser {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    async fn what_a_browser_cannot_do_is_refused() {
        let server = Server::start();
        let url = server.url("/echo");
        for (config, feature) in [
            (ClientConfig::default().header("x-a", "b"), "custom_headers"),
            (
                ClientConfig::default().max_frame_size(1024),
                "max_frame_size",
            ),
            (ClientConfig::default().compression(false), "compression"),
            (ClientConfig::default().cookie("a", "b"), "cookies"),
        ] {
            match Client::connect(&url, config).await {
                Err(Error::Unsupported(what)) => assert!(what.contains(feature), "{what}"),
                other => panic!("{feature}: expected Unsupported, got {other:?}"),
            }
        }
        let mut client = echo(&server).await;
        assert!(matches!(
            client.ping(b"x").await,
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            client.handshake_response(),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            client.close(1001, "", Duration::from_secs(1)).await,
            Err(Error::Unsupported(_))
        ));
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::sync::{Arc, Mutex};
    use wasmsocket_client::PingPongHandler;

    #[tokio::test]
    async fn handshake_response_and_headers() {
        let server = Server::start();
        let client = Client::connect(
            &server.url("/faulty"),
            ClientConfig::default().header("x-extra", "1"),
        )
        .await
        .unwrap();
        let response = client.handshake_response().unwrap();
        assert_eq!(response.status, 101);
        assert_eq!(response.header("x-faulty"), Some("yes"));
        assert_eq!(
            response.header("sec-websocket-extensions"),
            Some("permessage-deflate")
        );

        match Client::connect(
            &server.url("/faulty?upgrade=reject"),
            ClientConfig::default(),
        )
        .await
        {
            Err(Error::Handshake {
                status: 403, body, ..
            }) => assert_eq!(body, "not you"),
            other => panic!("expected a 403, got {other:?}"),
        }
    }

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl PingPongHandler for Recorder {
        fn on_ping(&self, data: &[u8]) -> Option<Vec<u8>> {
            self.0
                .lock()
                .unwrap()
                .push(format!("ping:{}", String::from_utf8_lossy(data)));
            Some(b"handled".to_vec())
        }
        fn on_pong(&self, data: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push(format!("pong:{}", String::from_utf8_lossy(data)));
        }
    }

    #[tokio::test]
    async fn ping_pong_handler_answers_pings() {
        let server = Server::start();
        let recorder = Recorder::default();
        let config = ClientConfig::default().ping_pong_handler(recorder.clone());
        let mut client = Client::connect(&server.url("/faulty"), config)
            .await
            .unwrap();
        // The faulty component pings on request and reports the pong it gets.
        client.write_text("ping").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "got pong handled");
        // Our own ping is answered by the host.
        client.ping(b"hi").await.unwrap();
        client.write_text("sync").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "sync");
        assert_eq!(*recorder.0.lock().unwrap(), ["ping:hello", "pong:hi"]);
    }

    #[tokio::test]
    async fn automatic_pongs_without_a_handler() {
        let server = Server::start();
        let mut client = Client::connect(&server.url("/faulty"), ClientConfig::default())
            .await
            .unwrap();
        client.write_text("ping").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "got pong hello");
    }

    #[tokio::test]
    async fn reconnects_when_the_host_restarts() {
        let first = Server::start();
        let port = first.host.addr().port();
        let url = first.url("/echo");
        let config = ClientConfig::default()
            .retry(RetryConfig::new(50, Duration::from_millis(100)))
            .read_timeout(Duration::from_secs(2));
        let mut client = Client::connect(&url, config).await.unwrap();
        client.write_text("one").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "one");
        drop(first);
        // The host comes back on the same port a moment later.
        let restart = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(500));
            wasmsocket_tests::Host::start(&format!(
                "[listener]\nhost = \"127.0.0.1\"\nport = {port}\n\n[[service]]\npath = \"/echo\"\ncomponent = {:?}\n",
                wasmsocket_tests::components::ECHO
            ))
        });
        // The read sees the connection drop and reconnects (retrying until the host is
        // back); nothing arrives on the new connection, so it ends in a read timeout
        // rather than in ConnectionClosed.
        match client.read().await {
            Err(Error::ReadTimeout) => {}
            other => panic!("expected a reconnect then a read timeout, got {other:?}"),
        }
        let _second = restart.await.unwrap();
        client.write_text("two").await.unwrap();
        assert_eq!(client.read_text().await.unwrap(), "two");
    }

    #[tokio::test]
    async fn connect_failures_are_typed() {
        let server = Server::start();
        match Client::connect("ws://127.0.0.1:1/echo", ClientConfig::default()).await {
            Err(Error::Connect(_)) => {}
            other => panic!("expected Connect, got {other:?}"),
        }
        match Client::connect(&server.url("/nowhere"), ClientConfig::default()).await {
            Err(Error::Handshake { status: 404, .. }) => {}
            other => panic!("expected a 404, got {other:?}"),
        }
        assert!(matches!(
            Client::connect("http://127.0.0.1/", ClientConfig::default()).await,
            Err(Error::InvalidUrl { .. })
        ));
    }
}
