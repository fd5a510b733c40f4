//! The `wasmsocket` command: serves WebSocket services implemented as WebAssembly
//! components, as configured in a TOML file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wasmsocket_host::{Config, Server};

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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> wasmsocket_host::Result<()> {
    match command {
        Command::Serve { config } => {
            let server = Server::bind(Config::load(&config)?).await?;
            // Tests and scripts read this line to learn the port.
            println!("wasmsocket listening on {}", server.local_addr());
            let serving = server.serve_until(shutdown_signal());
            // A second signal during the graceful stop stops at once.
            tokio::select! {
                result = serving => result,
                () = async {
                    shutdown_signal().await;
                    shutdown_signal().await;
                } => {
                    eprintln!("wasmsocket: stopping immediately");
                    Ok(())
                }
            }
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            let services = config.services.len();
            // Binding port 0 loads and links every component without taking the port.
            let mut config = config;
            config.listener.port = 0;
            Server::bind(config).await?;
            println!("ok: {services} service(s) load");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return interrupt.await.unwrap_or(()),
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
