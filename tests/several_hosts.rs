//! Several hosts behind one Redis: two real `wasmsocket` processes serving the chat
//! example with `[topics] backend = "redis"`, and a real Redis (Debian's
//! `redis-server`, installed by scripts/setup-services.sh) that the test starts on
//! 127.0.0.1 without persistence, stops and starts again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use wasmsocket_tests::{
    Client, Host, STEP, admin_get, components, connect, failing_check, free_port, scratch_dir,
};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const PASSWORD: &str = "several-hosts";
const UP: &str = "wasmsocket_topics_redis_up";
const DROPPED: &str = "wasmsocket_topics_redis_dropped_total";

/// A Redis server on 127.0.0.1:`port`, with a password and no persistence. Killed
/// when dropped.
struct Redis {
    child: Child,
    dir: PathBuf,
}

impl Redis {
    fn start(port: u16) -> Self {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "Redis's redis-server is missing: run scripts/setup-services.sh \
             (installs Debian's redis-server)"
        );
        let dir = scratch_dir("redis");
        let mut child = Command::new(REDIS_SERVER)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--requirepass", PASSWORD, "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = std::time::Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("redis-server exited before listening on {port}: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The chat example, its topics in the Redis at `port`, metrics at an admin port.
fn host_config(port: u16) -> String {
    format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[admin]\nport = 0\n\n\
         [[service]]\npath = \"/chat\"\ncomponent = {:?}\n\n\
         [topics]\nbackend = \"redis\"\nurl = \"redis://:{PASSWORD}@127.0.0.1:{port}\"\n",
        components::CHAT
    )
}

/// One sample of the host's metrics.
async fn metric(admin: SocketAddr, key: &str) -> Option<f64> {
    let (_, response) = admin_get(admin, "/metrics").await;
    response.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == key).then(|| value.parse().unwrap())
    })
}

/// Polls `key` on `host`'s metrics until `done` says yes.
async fn wait_for(host: &Host, key: &str, what: &str, done: impl Fn(f64) -> bool) {
    let admin = host.admin_addr().expect("admin address");
    let deadline = Instant::now() + STEP;
    loop {
        let value = metric(admin, key).await;
        if value.is_some_and(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {key} is {value:?} after {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn join(host: &Host, name: &str) -> String {
    host.url(&format!("/chat?room=tea&name={name}"))
}

/// The next chat line within `limit`: (from, text).
async fn line_within(client: &mut Client, limit: Duration) -> Option<(String, String)> {
    let deadline = Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, client.next())
            .await
            .ok()?;
        match message.expect("stream open").expect("valid message") {
            Message::Text(text) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                return Some((
                    value["from"].as_str().unwrap().to_owned(),
                    value["text"].as_str().unwrap().to_owned(),
                ));
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a chat line, got {other:?}"),
        }
    }
}

async fn line(client: &mut Client) -> (String, String) {
    line_within(client, STEP)
        .await
        .expect("a chat line in time")
}

fn said(from: &str, text: &str) -> (String, String) {
    (from.to_owned(), text.to_owned())
}

async fn say(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
}

/// Nothing arrives for `quiet`.
async fn assert_silent(client: &mut Client, quiet: Duration, who: &str) {
    if let Some(line) = line_within(client, quiet).await {
        panic!("{who} expected silence, got {line:?}");
    }
}

/// Sends probes from `sender` (called `name`) until one reaches `receiver` on the
/// other host (so that host subscribed and Redis relays), then a marker that
/// `receiver` is read up to: its next line is what `sender` says next. Returns how
/// many probes were sent. `receiver` may see join announcements, and probes, and
/// nothing else.
async fn until_relayed(sender: &mut Client, name: &str, receiver: &mut Client) -> usize {
    let deadline = Instant::now() + STEP;
    let mut probes = 0;
    'probing: loop {
        assert!(
            Instant::now() < deadline,
            "nothing {name} said reached the other host in {STEP:?}"
        );
        say(sender, &format!("probe {probes}")).await;
        probes += 1;
        while let Some((from, text)) = line_within(receiver, Duration::from_millis(100)).await {
            if from == name && text.starts_with("probe ") {
                break 'probing;
            }
            assert_eq!(from, "room", "unexpected line {text:?}");
        }
    }
    say(sender, "synced").await;
    loop {
        let (from, text) = line(receiver).await;
        if (from.as_str(), text.as_str()) == (name, "synced") {
            return probes;
        }
        assert!(
            from == "room" || (from == name && text.starts_with("probe ")),
            "unexpected line from {from}: {text:?}"
        );
    }
}

/// `local` is on the sender's host: it gets every probe and the marker once, in
/// order (and maybe join announcements, whose relaying races the test).
async fn expect_probes(local: &mut Client, name: &str, probes: usize) {
    let mut next = 0;
    loop {
        let (from, text) = line(local).await;
        if from == "room" {
            continue;
        }
        if next == probes {
            assert_eq!(said(&from, &text), said(name, "synced"));
            return;
        }
        assert_eq!(said(&from, &text), said(name, &format!("probe {next}")));
        next += 1;
    }
}

/// `remote` is on another host than `name`: it may have missed the first probes (sent
/// before its host subscribed); it is read up to the marker.
async fn skip_to_marker(remote: &mut Client, name: &str) {
    loop {
        let (from, text) = line(remote).await;
        if from == "room" {
            continue;
        }
        assert_eq!(from, name, "unexpected line {text:?}");
        if text == "synced" {
            return;
        }
        assert!(text.starts_with("probe "), "unexpected line {text:?}");
    }
}

async fn send_burst(sender: &mut Client, label: &str, count: usize) {
    for n in 0..count {
        sender
            .feed(Message::text(format!("{label} {n}")))
            .await
            .unwrap();
    }
    sender.flush().await.unwrap();
}

async fn expect_burst(receiver: &mut Client, from: &str, label: &str, count: usize) {
    for n in 0..count {
        assert_eq!(line(receiver).await, said(from, &format!("{label} {n}")));
    }
}

/// Issue 8: a chat message sent to host A reaches the clients of host B through
/// Redis, a burst in order, and back; A's own clients get it once, from A, and the
/// sender never. With Redis stopped both hosts keep serving and delivering locally;
/// with Redis back on the same port, cross-host delivery resumes by itself.
#[tokio::test]
async fn chat_across_hosts_through_redis() {
    let port = free_port();
    let redis = Redis::start(port);
    let config = host_config(port);
    let mut a = Host::start(&config);
    let mut b = Host::start(&config);
    for host in [&a, &b] {
        wait_for(host, UP, "connect to Redis", |up| up == 1.0).await;
    }

    // Bob on B; alice and carol on A, all in one room.
    let mut bob = connect(&join(&b, "bob")).await;
    let mut alice = connect(&join(&a, "alice")).await;
    let mut carol = connect(&join(&a, "carol")).await;
    // (Whether "bob joined" reaches A depends on when A subscribed to Redis.)
    loop {
        match line(&mut alice).await {
            announced if announced == said("room", "carol joined") => break,
            announced => assert_eq!(announced, said("room", "bob joined")),
        }
    }

    // A → B. Carol, beside alice on A, gets each message exactly once: A ignores its
    // own messages when Redis sends them back.
    let probes = until_relayed(&mut alice, "alice", &mut bob).await;
    expect_probes(&mut carol, "alice", probes).await;
    send_burst(&mut alice, "burst", 200).await;
    expect_burst(&mut bob, "alice", "burst", 200).await;
    expect_burst(&mut carol, "alice", "burst", 200).await;

    // B → A.
    until_relayed(&mut bob, "bob", &mut alice).await;
    skip_to_marker(&mut carol, "bob").await;
    say(&mut bob, "hello from B").await;
    assert_eq!(line(&mut alice).await, said("bob", "hello from B"));
    assert_eq!(line(&mut carol).await, said("bob", "hello from B"));
    // Nobody got their own messages back, nor any twice.
    assert_silent(&mut alice, Duration::from_millis(300), "alice").await;
    assert_silent(&mut bob, Duration::from_millis(50), "bob").await;
    assert_silent(&mut carol, Duration::from_millis(50), "carol").await;

    // Redis goes away.
    drop(redis);
    for host in [&a, &b] {
        wait_for(host, UP, "notice the outage", |up| up == 0.0).await;
    }
    // A still delivers locally, at once (well within the relay's 5 s timeouts); its
    // message for B is dropped and counted.
    say(&mut alice, "during the outage").await;
    assert_eq!(
        line_within(&mut carol, Duration::from_secs(2)).await,
        Some(said("alice", "during the outage"))
    );
    wait_for(&a, DROPPED, "count the dropped message", |dropped| {
        dropped >= 1.0
    })
    .await;
    // B still serves: a newcomer there is announced to bob at once.
    let mut dave = connect(&join(&b, "dave")).await;
    assert_eq!(
        line_within(&mut bob, Duration::from_secs(2)).await,
        Some(said("room", "dave joined"))
    );
    assert!(a.is_running() && b.is_running());

    // Redis is back on the same port: the hosts reconnect and subscribe again.
    let _redis = Redis::start(port);
    for host in [&a, &b] {
        wait_for(host, UP, "reconnect to Redis", |up| up == 1.0).await;
    }
    // The message from the outage is not delivered late (it is not in the probes'
    // way), and new ones flow again, in order.
    let probes = until_relayed(&mut alice, "alice", &mut bob).await;
    expect_probes(&mut carol, "alice", probes).await;
    skip_to_marker(&mut dave, "alice").await;
    send_burst(&mut alice, "after", 100).await;
    expect_burst(&mut bob, "alice", "after", 100).await;
    expect_burst(&mut dave, "alice", "after", 100).await;
    expect_burst(&mut carol, "alice", "after", 100).await;
    // And the other way.
    let probes = until_relayed(&mut bob, "bob", &mut carol).await;
    expect_probes(&mut dave, "bob", probes).await;
    say(&mut bob, "B again").await;
    assert_eq!(line(&mut carol).await, said("bob", "B again"));
    assert_eq!(line(&mut dave).await, said("bob", "B again"));
    assert!(a.is_running() && b.is_running());
    // The hosts go before Redis, so that they do not log its going away.
    drop((a, b));
}

/// `wasmsocket check` validates `[topics]` (without connecting) and names the field.
#[test]
fn check_validates_the_topics_section() {
    let dir = scratch_dir("topics-check");
    let file = dir.join("wasmsocket.toml");
    let base = format!(
        "[listener]\nport = 0\n\n[[service]]\npath = \"/chat\"\ncomponent = {:?}\n\n[topics]\n",
        components::CHAT
    );
    for (topics, why) in [
        (
            "backend = \"redis\"\nurl = \"redis://:secret@127.0.0.1:99999\"",
            "port",
        ),
        (
            "backend = \"redis\"\nurl = \"http://127.0.0.1\"",
            "redis://",
        ),
        ("backend = \"redis\"", "required"),
        ("url = \"redis://127.0.0.1\"", "only with backend"),
    ] {
        std::fs::write(&file, format!("{base}{topics}\n")).unwrap();
        let error = failing_check(&file);
        assert!(
            error.contains("topics.url") && error.contains(why),
            "{topics}: {error}"
        );
        assert!(!error.contains("secret"), "the password leaked: {error}");
    }
    // A valid section passes, Redis or not: checking does not connect.
    std::fs::write(
        &file,
        format!(
            "{base}backend = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let output = Command::new(wasmsocket_tests::host_binary())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
