//! The `wasmsocket` command: serves WebSocket services implemented as WebAssembly
//! components, as configured in a TOML file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_appender::non_blocking::WorkerGuard;
use wasmsocket_host::{Config, LogFormat, Profiler, Server};

/// mimalloc rather than glibc's malloc. A connection's task moves between worker
/// threads, so what one thread allocated another often frees; glibc then takes the
/// allocating thread's arena lock, and in the set-up load the workers slept on it
/// (decision 18).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// WebSockets served by sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "wasmsocket", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the services of a configuration file until interrupted.
    Serve {
        /// The configuration file (TOML).
        #[arg(short, long, default_value = "wasmsocket.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and load its components, without serving.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, default_value = "wasmsocket.toml")]
        config: PathBuf,
    },
}

/// How many task polls a worker makes between looks for new socket events (tokio's
/// default is 61). Side by side (100 connections, two cores shared with the load
/// generator) the p99 round trip fell from 2.9-4.8 ms to 1.2-2.5 ms at 128, with
/// throughput unchanged; the native servers' tails shortened too. Why, as far as
/// measured (workers steal sooner, in smaller pieces): docs/decisions.md, 24. The bench
/// runs its native servers with the same value (bench/src/serve.rs).
const EVENT_INTERVAL: u32 = 128;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `WASMSOCKET_PROFILE=perfmap`: see the README's Benchmark section.
    let profiler = match std::env::var("WASMSOCKET_PROFILE") {
        Err(std::env::VarError::NotPresent) => Ok(Profiler::None),
        Err(error) => Err(error.to_string()),
        Ok(name) => name.parse(),
    };
    let profiler = match profiler {
        Ok(profiler) => profiler,
        Err(message) => {
            eprintln!("error: WASMSOCKET_PROFILE: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The log writer's guard: dropped before exit, it writes out the lines still queued.
    let mut logs = None;
    let result = runtime.block_on(run(cli.command, profiler, &mut logs));
    drop(logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, at the levels `RUST_LOG` gives (default `info`), as text or JSON.
///
/// Lines are written by a thread of their own: a worker thread only queues them, so
/// neither a `write` per line nor a slow reader of stderr holds up connections. When
/// 128k lines are queued, loggers wait (no line is dropped). `guard` keeps the writer.
fn init_logging(format: LogFormat, guard: &mut Option<WorkerGuard>) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (writer, writer_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("wasmsocket-log")
        .finish(std::io::stderr());
    *guard = Some(writer_guard);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        _ => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn run(
    command: Command,
    profiler: Profiler,
    logs: &mut Option<WorkerGuard>,
) -> wasmsocket_host::Result<()> {
    match command {
        Command::Serve { config } => {
            let mut config =
                Config::load(&config).inspect_err(|_| init_logging(LogFormat::Text, logs))?;
            config.profiler = profiler;
            init_logging(config.log.format, logs);
            raise_open_file_limit();
            let server = Server::bind(config).await?;
            // Listen for signals before telling anyone we serve, so a stop that
            // follows at once is still graceful.
            let mut signals = Signals::listen()?;
            // Tests and scripts read these lines to learn the ports.
            if let Some(admin) = server.admin_addr() {
                println!("wasmsocket admin on {admin}");
            }
            println!("wasmsocket listening on {}", server.local_addr());
            let handle = server.handle();
            #[cfg(unix)]
            {
                // SIGHUP: load every component again for new connections.
                let handle = handle.clone();
                let mut hangup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                        .map_err(wasmsocket_host::Error::Signal)?;
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        handle.reload().await;
                    }
                });
            }
            tokio::spawn(async move {
                signals.next().await;
                handle.graceful_stop();
                signals.next().await;
                eprintln!("wasmsocket: second signal; stopping immediately");
                std::process::exit(0);
            });
            // The accept loop runs on a worker, not on this thread: the connections it
            // spawns go to that worker's own queue, and no thread outside the runtime
            // has to be woken for every accept.
            match tokio::spawn(server.serve()).await {
                Ok(result) => result,
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
        Command::Check { config } => {
            init_logging(LogFormat::Text, logs);
            // As `serve` would, so the warnings about limits are the same.
            raise_open_file_limit();
            let mut config = Config::load(&config)?;
            let services = config.services.len();
            config.profiler = profiler;
            // Binding port 0 loads and links every component without taking the port.
            config.listener.port = 0;
            config.admin = None;
            Server::bind(config).await?;
            println!("ok: {services} service(s) load");
            Ok(())
        }
    }
}

/// Raises the soft limit on open files to the hard one, as servers that hold many
/// connections do: every connection is a descriptor, and the usual soft default (1,024)
/// would stop the host long before its services' `max_connections`.
fn raise_open_file_limit() {
    match raise_soft_limit() {
        Ok(Some((from, to))) => tracing::info!(from, to, "raised the open-file limit"),
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// [`raise_open_file_limit`]: the limit before and after, when it changed.
fn raise_soft_limit() -> std::io::Result<Option<(u64, u64)>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let Some(soft) = limit.current else {
        return Ok(None);
    };
    // No hard limit: the kernel's own cap on a process's descriptors.
    let Some(hard) = limit.maximum.or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }) else {
        return Ok(None);
    };
    if soft >= hard {
        return Ok(None);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        },
    )?;
    Ok(Some((soft, hard)))
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), registered when created.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> wasmsocket_host::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let register = |kind| signal(kind).map_err(wasmsocket_host::Error::Signal);
            Ok(Self {
                interrupt: register(SignalKind::interrupt())?,
                terminate: register(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Completes at the next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
