//! Helpers for the end-to-end tests: the guest components built by `build.rs`, and a
//! handle on a running `wasmsocket` host process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Paths of the guest components, built for `wasm32-wasip2` by `build.rs`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// The `wasmsocket` binary of this build (cargo builds it for the host crate's own
/// integration tests, beside this test executable).
pub fn host_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in <target>/<profile>/deps");
    let binary = profile_dir.join(format!("wasmsocket{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (see README)",
        binary.display()
    );
    binary
}

/// Runs `wasmsocket check --config FILE`; returns the error output of a check that
/// failed (panics if it passed).
pub fn failing_check(config: &std::path::Path) -> String {
    let output = Command::new(host_binary())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run wasmsocket check");
    assert!(!output.status.success(), "the check passed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A tokio-tungstenite client connection.
pub type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `url`, expecting the upgrade to be accepted (101) within [`STEP`].
pub async fn connect(url: &str) -> Client {
    let (client, response) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
    assert_eq!(response.status(), 101);
    client
}

/// The client's next message, within [`STEP`].
pub async fn next(client: &mut Client) -> tokio_tungstenite::tungstenite::Message {
    use futures_util::StreamExt;
    tokio::time::timeout(STEP, client.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("valid message")
}

/// `GET path` on the admin endpoint: status and body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// A private scratch directory for one test.
pub fn scratch_dir(label: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasmsocket-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A running host process, killed when dropped.
pub struct Host {
    child: Child,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    dir: PathBuf,
}

impl Host {
    /// Starts `wasmsocket serve` with `config`, a TOML text whose `[listener]` must say
    /// `port = 0`; waits until it listens.
    pub fn start(config: &str) -> Self {
        Self::start_under("", config)
    }

    /// Like [`Host::start`], with shell commands run first in the host's process
    /// (e.g. `ulimit -v 1000000` to cap its address space).
    pub fn start_under(shell_prefix: &str, config: &str) -> Self {
        let dir = scratch_dir("host");
        let file = dir.join("wasmsocket.toml");
        std::fs::write(&file, config).expect("write config");
        let mut command = if shell_prefix.is_empty() {
            Command::new(host_binary())
        } else {
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(format!("{shell_prefix}; exec \"$0\" \"$@\""))
                .arg(host_binary());
            command
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(&file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the wasmsocket binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut admin = None;
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("wasmsocket admin on ") {
                        admin = Some(addr.trim().parse().expect("admin address"));
                    }
                    if let Some(addr) = line.strip_prefix("wasmsocket listening on ") {
                        break addr.trim().parse().expect("listening address");
                    }
                }
                _ => {
                    let status = child.wait().expect("host exit status");
                    panic!("host exited before listening: {status}");
                }
            }
        };
        // Keep draining stdout so the host never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            admin,
            dir,
        }
    }

    /// Starts a host serving one component at `path` with extra service settings.
    pub fn with_service(path: &str, component: &str, service_extra: &str) -> Self {
        Self::start(&format!(
            "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[[service]]\npath = \"{path}\"\ncomponent = {component:?}\n{service_extra}\n"
        ))
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address the host listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin endpoint's address, when the config has an `[admin]` table.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// `ws://host:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends SIGTERM (a graceful stop) to the host.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal called `name` (`TERM`, `HUP`, ...) to the host.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `limit` for the host to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll host") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll host").is_none()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long a test waits for any one expected event before failing.
pub const STEP: Duration = Duration::from_secs(10);
