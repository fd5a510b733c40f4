//! What the load generator drives: the wasmsocket host and the native echo servers,
//! each started as a child process on 127.0.0.1, port 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// A native WebSocket engine the bench can serve with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    /// fastwebsockets (no permessage-deflate).
    Fastwebsockets,
    /// yawc with the host's settings but yawc's default buffers (the host's engine,
    /// without WebAssembly).
    Yawc,
    /// tokio-tungstenite (no permessage-deflate).
    Tungstenite,
    /// yawc's echo with a bare WebAssembly call on every message: in the one-message
    /// echo loads, the least a host with an instance per connection pays on this
    /// machine (a bound, not a reference).
    Floor,
}

impl Engine {
    /// Whether the engine implements permessage-deflate (RFC 7692).
    pub(crate) fn supports_deflate(self) -> bool {
        matches!(self, Self::Yawc | Self::Floor)
    }

    fn arg(self) -> &'static str {
        match self {
            Self::Fastwebsockets => "fastwebsockets",
            Self::Yawc => "yawc",
            Self::Tungstenite => "tungstenite",
            Self::Floor => "floor",
        }
    }
}

/// One server the loads are run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The `wasmsocket` host serving the echo component.
    Host {
        /// Column name.
        label: &'static str,
        /// The service's `mode` key, when not the default (isolated: one instance per
        /// connection).
        mode: Option<&'static str>,
    },
    /// A native echo server (`wasmsocket-bench serve <engine>`).
    Native(Engine),
}

/// Every target, in table order. A host variant is one more entry here.
pub(crate) const TARGETS: &[Target] = &[
    Target::Host {
        label: "wasmsocket (isolated)",
        mode: None,
    },
    Target::Host {
        label: "wasmsocket (shared)",
        mode: Some("shared"),
    },
    Target::Native(Engine::Fastwebsockets),
    Target::Native(Engine::Yawc),
    Target::Native(Engine::Tungstenite),
    Target::Native(Engine::Floor),
];

impl Target {
    /// The column name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Host { label, .. } => label,
            Self::Native(Engine::Fastwebsockets) => "fastwebsockets 0.10",
            Self::Native(Engine::Yawc) => "yawc 0.5",
            Self::Native(Engine::Tungstenite) => "tokio-tungstenite 0.30",
            Self::Native(Engine::Floor) => "wasmtime floor",
        }
    }

    /// A short name for `--targets`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Host { mode: None, .. } => "host",
            Self::Host {
                mode: Some(mode), ..
            } => mode,
            Self::Native(engine) => engine.arg(),
        }
    }

    /// Whether this is a native engine (the reference the ratios are taken against).
    pub(crate) fn is_native(self) -> bool {
        matches!(self, Self::Native(engine) if engine != Engine::Floor)
    }

    /// Whether the target implements permessage-deflate.
    pub(crate) fn supports_deflate(self) -> bool {
        match self {
            Self::Host { .. } => true,
            Self::Native(engine) => engine.supports_deflate(),
        }
    }
}

/// What starting a server needs.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    /// The `wasmsocket` binary.
    pub(crate) host_bin: Option<PathBuf>,
    /// The echo component (`echo.wasm`).
    pub(crate) component: Option<PathBuf>,
    /// Tokio worker threads of every server.
    pub(crate) workers: usize,
    /// Where configuration files and server logs go.
    pub(crate) work_dir: PathBuf,
}

/// A running server; killed when stopped or dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The path of the echo service.
    pub(crate) path: &'static str,
    /// Its process id (for `/proc`).
    pub(crate) pid: u32,
    log: PathBuf,
}

impl Launcher {
    /// Starts `target` and waits until it listens.
    pub(crate) async fn start(&self, target: Target) -> anyhow::Result<Server> {
        let log = self.work_dir.join(format!("{}.log", target.key()));
        let (mut command, path) = match target {
            Target::Host { mode, .. } => {
                let host_bin = self
                    .host_bin
                    .as_deref()
                    .context("no host binary: pass --host-bin or use scripts/bench.sh")?;
                let component = self
                    .component
                    .as_deref()
                    .context("no echo component: pass --component or use scripts/bench.sh")?;
                let config = self.work_dir.join(format!("{}.toml", target.key()));
                std::fs::write(&config, host_config(component, mode)?)
                    .with_context(|| format!("writing {}", config.display()))?;
                let mut command = Command::new(host_bin);
                command
                    .arg("serve")
                    .arg("--config")
                    .arg(&config)
                    // The host leaves its worker count to tokio, which reads this.
                    .env("TOKIO_WORKER_THREADS", self.workers.to_string())
                    .env(
                        "RUST_LOG",
                        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
                    );
                (command, "/echo")
            }
            Target::Native(engine) => {
                let mut command = Command::new(std::env::current_exe()?);
                command
                    .arg("serve")
                    .arg(engine.arg())
                    .arg("--workers")
                    .arg(self.workers.to_string());
                (command, "/")
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", target.name()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        // The host compiles the component before it listens.
        let read = tokio::time::timeout(Duration::from_secs(120), stdout.read_line(&mut line))
            .await
            .ok()
            .and_then(Result::ok);
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|addr| addr.parse::<SocketAddr>().ok());
        let Some(addr) = addr.filter(|_| read.is_some_and(|n| n > 0)) else {
            let _ = child.kill().await;
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "{} did not start: {}{}",
                target.name(),
                line.trim(),
                log.trim()
            );
        };
        // Keep draining stdout (a guest's prints go there) so the server never blocks.
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while stdout.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        Ok(Server {
            child,
            addr,
            path,
            pid,
            log,
        })
    }
}

impl Server {
    /// Kills the server and waits for it to exit.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// The end of the server's log, to explain a failure.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// The host's configuration: the echo service on 127.0.0.1, port 0, with limits that
/// let every load through (4 MiB messages; a connection cap above the scale load).
fn host_config(component: &Path, mode: Option<&str>) -> anyhow::Result<String> {
    let component = std::fs::canonicalize(component)
        .with_context(|| format!("echo component {}", component.display()))?;
    let mode = mode.map_or(String::new(), |mode| format!("mode = \"{mode}\"\n"));
    Ok(format!(
        "[listener]\n\
         host = \"127.0.0.1\"\n\
         port = 0\n\
         \n\
         [[service]]\n\
         path = \"/echo\"\n\
         component = {component:?}\n\
         max_frame_size = {max}\n\
         max_message_size = {max}\n\
         {mode}\
         \n\
         [service.limits]\n\
         max_connections = 1000000\n\
         max_memory = 1073741824\n",
        component = component.display().to_string(),
        max = crate::serve::MAX_MESSAGE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_not_a_reference() {
        let references: Vec<&str> = TARGETS
            .iter()
            .filter(|target| target.is_native())
            .map(|target| target.key())
            .collect();
        assert_eq!(references, ["fastwebsockets", "yawc", "tungstenite"]);
    }
}
