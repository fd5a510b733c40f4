//! Operations: Prometheus metrics at the admin address, structured (JSON) logs with
//! the connection's span, and `wasmsocket check`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wasmsocket_tests::{Host, STEP, admin_get, components, host_binary, scratch_dir};

/// The samples of a scrape: `name{labels}` → value.
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            (key.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

/// Polls the metrics until `key` reaches `want` (connections end asynchronously).
async fn wait_for(admin: SocketAddr, key: &str, want: f64) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let samples = scrape(admin).await;
        if samples.get(key) == Some(&want) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never became {want}: {:?}",
            samples.get(key)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_what_happens() {
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[admin]\nport = 0\n\n\
         [[service]]\npath = \"/faulty\"\ncomponent = {c:?}\n\
         [service.limits]\ncallback_timeout = 0.3\n\n\
         [[service]]\npath = \"/secure\"\ncomponent = {c:?}\n\
         [[service.auth]]\njwt_validator = {{ signature = {{ secret = \"s\" }} }}\n",
        c = components::FAULTY
    ));
    let admin = host.admin_addr().expect("admin address printed");
    assert_eq!(admin_get(admin, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(admin_get(admin, "/nope").await.0, 404);

    let url = host.url("/faulty");
    let (mut first, _) = connect_async(&url).await.unwrap();
    let (mut second, _) = connect_async(&url).await.unwrap();
    first.send(Message::text("hello")).await.unwrap();
    assert_eq!(first.next().await.unwrap().unwrap(), Message::text("hello"));
    let samples = scrape(admin).await;
    let s = "service=\"/faulty\"";
    assert_eq!(
        sample(&samples, &format!("wasmsocket_connections_open{{{s}}}")),
        2.0
    );
    assert_eq!(
        sample(
            &samples,
            &format!("wasmsocket_messages_total{{{s},direction=\"in\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            &format!("wasmsocket_message_bytes_total{{{s},direction=\"out\"}}")
        ),
        5.0
    );
    assert!(sample(&samples, &format!("wasmsocket_guest_memory_bytes{{{s}}}")) >= 2.0 * 65536.0);
    assert!(
        sample(
            &samples,
            &format!("wasmsocket_callback_duration_seconds_count{{{s}}}")
        ) >= 1.0
    );

    // Refusals, by reason.
    for query in ["?upgrade=reject", "?upgrade=panic"] {
        assert!(connect_async(format!("{url}{query}")).await.is_err());
    }
    assert!(connect_async(host.url("/secure")).await.is_err());
    // A trap, a deadline, a normal close by the peer.
    first.send(Message::text("panic")).await.unwrap();
    second.send(Message::text("loop")).await.unwrap();
    let (mut third, _) = connect_async(&url).await.unwrap();
    third
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();

    let samples = wait_for(admin, &format!("wasmsocket_connections_open{{{s}}}"), 0.0).await;
    for (key, want) in [
        (
            format!("wasmsocket_upgrades_total{{{s},outcome=\"accepted\",reason=\"\"}}"),
            3.0,
        ),
        (
            format!("wasmsocket_upgrades_total{{{s},outcome=\"refused\",reason=\"guest_rejected\"}}"),
            1.0,
        ),
        (
            format!("wasmsocket_upgrades_total{{{s},outcome=\"refused\",reason=\"guest_failed\"}}"),
            1.0,
        ),
        (
            "wasmsocket_upgrades_total{service=\"/secure\",outcome=\"refused\",reason=\"unauthorized\"}"
                .to_owned(),
            1.0,
        ),
        (format!("wasmsocket_guest_traps_total{{{s}}}"), 3.0),
        (format!("wasmsocket_guest_deadline_exceeded_total{{{s}}}"), 1.0),
        (
            format!("wasmsocket_closes_total{{{s},code=\"1011\",by=\"host\"}}"),
            2.0,
        ),
        (
            format!("wasmsocket_closes_total{{{s},code=\"1000\",by=\"peer\"}}"),
            1.0,
        ),
    ] {
        assert_eq!(sample(&samples, &key), want, "{key}");
    }
    // Isolated instances give their memory back when their connections end.
    assert_eq!(
        sample(&samples, &format!("wasmsocket_guest_memory_bytes{{{s}}}")),
        0.0
    );
}

/// Every connection is a descriptor. The host raises its soft open-file limit to the
/// hard one, so a low soft limit (here 64, where the common default is 1,024) does not
/// cap its connections: 150 are served at once.
#[tokio::test]
async fn a_low_soft_open_file_limit_does_not_cap_connections() {
    let host = Host::start_under(
        "ulimit -Sn 64",
        &format!(
            "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[[service]]\npath = \"/echo\"\n\
             component = {:?}\nmode = \"shared\"\n",
            components::ECHO
        ),
    );
    let url = host.url("/echo");
    let mut open = Vec::new();
    for index in 0..150 {
        let (client, _) = tokio::time::timeout(STEP, connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("connection {index} got no answer: out of descriptors?"))
            .unwrap_or_else(|error| panic!("connection {index}: {error}"));
        open.push(client);
    }
    for (index, client) in open.iter_mut().enumerate() {
        let text = format!("connection {index}");
        client.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(STEP, client.next())
            .await
            .expect("an echo in time")
            .expect("a message")
            .expect("not an error");
        assert_eq!(echo, Message::text(text));
    }
}

#[tokio::test]
async fn json_logs_carry_the_connection_span() {
    let dir = scratch_dir("json-logs");
    let config = dir.join("wasmsocket.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nformat = \"json\"\n\n[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
             [[service]]\npath = \"/faulty\"\ncomponent = {:?}\n",
            components::FAULTY
        ),
    )
    .unwrap();
    let mut child = Command::new(host_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = stdout.next().expect("host output").unwrap();
        if let Some(addr) = line.strip_prefix("wasmsocket listening on ") {
            break addr.to_owned();
        }
    };
    let (stderr_lines, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = stderr_lines.send(line.unwrap());
        }
    });
    let (mut client, _) = connect_async(format!("ws://{addr}/faulty")).await.unwrap();
    client.send(Message::text("x")).await.unwrap();
    client.next().await.unwrap().unwrap();

    let open = loop {
        let line = lines
            .recv_timeout(STEP)
            .expect("a log line for the open connection");
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if json["fields"]["message"] == "connection open" {
            break json;
        }
    };
    assert_eq!(open["level"], "INFO");
    assert_eq!(open["span"]["name"], "conn");
    assert_eq!(open["span"]["service"], "/faulty");
    assert!(open["span"]["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(
        open["span"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:"))
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// An echo service's config for a host on port 0.
fn echo_config() -> String {
    format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[[service]]\npath = \"/echo\"\n\
         component = {:?}\n",
        components::ECHO
    )
}

/// Echoes one message through `host`.
async fn echo_once(host: &Host) {
    let (mut client, _) = connect_async(host.url("/echo")).await.unwrap();
    client.send(Message::text("profiled")).await.unwrap();
    let echo = tokio::time::timeout(STEP, client.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::text("profiled"));
}

#[tokio::test]
async fn a_perf_map_is_written_when_asked_for() {
    let map_of = |host: &Host| std::path::PathBuf::from(format!("/tmp/perf-{}.map", host.pid()));

    let plain = Host::start(&echo_config());
    echo_once(&plain).await;
    assert!(!map_of(&plain).exists(), "a perf map nobody asked for");

    let host = Host::start_under("export WASMSOCKET_PROFILE=perfmap", &echo_config());
    echo_once(&host).await;
    let map = map_of(&host);
    let symbols =
        std::fs::read_to_string(&map).unwrap_or_else(|error| panic!("{}: {error}", map.display()));
    let _ = std::fs::remove_file(&map);
    // perf's format: start address, size, name (hex, hex, rest of the line).
    let named = symbols
        .lines()
        .filter_map(|line| line.splitn(3, ' ').nth(2))
        .find(|name| name.contains("on-text-message"));
    assert!(named.is_some(), "no guest callback in {}", map.display());
}

#[test]
fn an_unknown_profiler_is_refused() {
    let dir = scratch_dir("profiler");
    let config = dir.join("wasmsocket.toml");
    std::fs::write(&config, echo_config()).unwrap();
    let output = Command::new(host_binary())
        .args(["check", "--config"])
        .arg(&config)
        .env("WASMSOCKET_PROFILE", "vtune")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: WASMSOCKET_PROFILE: unknown profiler `vtune`"),
        "{stderr}"
    );
}
