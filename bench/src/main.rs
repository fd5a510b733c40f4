//! `wasmsocket-bench`: drives the wasmsocket host (serving the echo component) and
//! native Rust WebSocket echo servers with the same loads, one after another in one
//! run, and reports each against the best native engine.
//!
//! Run it through `scripts/bench.sh`, which builds the host, the echo component and
//! this binary in release mode and passes their paths. `wasmsocket-bench serve
//! <engine>` is the native echo server the bench starts as a child process.

mod load;
mod report;
mod serve;
mod system;
mod targets;
mod wire;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::load::{EchoSpec, Timing};
use crate::report::{LoadDef, LoadKind, Outcome, Report, ScaleResult};
use crate::targets::{Engine, Launcher, TARGETS, Target};

/// Benchmarks the wasmsocket host against native Rust WebSocket echo servers.
#[derive(Parser)]
#[command(
    name = "wasmsocket-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a native echo server on 127.0.0.1 (started by the bench itself).
    Serve {
        /// The engine.
        engine: Engine,
        /// The port; 0 picks a free one. The address is printed on stdout.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Tokio worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The `wasmsocket` host binary.
    #[arg(long, env = "WASMSOCKET_HOST_BIN")]
    host_bin: Option<PathBuf>,
    /// The echo component the host serves (`echo.wasm`).
    #[arg(long, env = "WASMSOCKET_ECHO_COMPONENT")]
    component: Option<PathBuf>,
    /// Rounds; every number reported is the median (default 3, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Smoke check: short windows, 1,000 idle connections, one round.
    #[arg(long)]
    quick: bool,
    /// Warm-up before each measured window, seconds (default 2, or 0.3 with --quick).
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured window of each rate load, seconds (default 5, or 1 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Connections of the idle-memory load (default 10,000, or 1,000 with --quick).
    #[arg(long)]
    idle_conns: Option<usize>,
    /// Messages in flight per connection in the pipelined load.
    #[arg(long, default_value_t = 64)]
    pipeline_depth: usize,
    /// Clients opening connections at once in the set-up load.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    /// Tokio worker threads of every server (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Tokio worker threads of the load generator (default: one per core).
    #[arg(long)]
    client_workers: Option<usize>,
    /// Only these loads (small, large, pipelined, idle, setup, deflate; scale is
    /// --scale).
    #[arg(long, value_delimiter = ',')]
    loads: Vec<String>,
    /// Only these targets (host, shared, fastwebsockets, yawc, tungstenite, floor).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Also hold --scale-conns connections to each target (slow).
    #[arg(long)]
    scale: bool,
    /// Connections of the scale load.
    #[arg(long, default_value_t = 100_000)]
    scale_conns: usize,
    /// Source addresses 127.0.0.1..=N for the idle and scale loads' client ends
    /// (about 28,000 ephemeral ports each).
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// Measure a rate again (up to --retries times) when other processes used more
    /// than this much CPU (percent of one core) during its window.
    #[arg(long, default_value_t = 25.0)]
    max_other_cpu: f64,
    /// How often to measure again for --max-other-cpu (default 2, or 0 with --quick).
    #[arg(long)]
    retries: Option<usize>,
    /// Write the Markdown report here, and its SVG chart beside it (`.svg`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The revision the host, the component and the bench were built from, to record
    /// in the report (scripts/bench.sh sets it).
    #[arg(long, env = "WASMSOCKET_BENCH_REVISION", hide = true)]
    revision: Option<String>,
    /// The command line to record in the report (scripts/bench.sh sets it).
    #[arg(long, env = "WASMSOCKET_BENCH_COMMAND", hide = true)]
    command_line: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve {
            engine,
            port,
            workers,
        }) => serve::run(engine, port, workers.unwrap_or_else(system::cores)),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let client_workers = args.client_workers.unwrap_or_else(system::cores);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_workers)
        .enable_all()
        .build()?
        .block_on(async {
            // Dropping the bench's future on a signal drops the running server, whose
            // process is killed on drop.
            tokio::select! {
                result = bench(args, client_workers) => result,
                signal = interrupted() => {
                    signal?;
                    let _ = std::fs::remove_dir_all(work_dir());
                    bail!("interrupted; the server that was running is stopped")
                }
            }
        })
}

/// Where this run keeps server configurations and logs.
fn work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("wasmsocket-bench-{}", std::process::id()))
}

/// Waits for SIGINT or SIGTERM.
async fn interrupted() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn loads(args: &RunArgs) -> anyhow::Result<Vec<LoadDef>> {
    let idle_conns = args
        .idle_conns
        .unwrap_or(if args.quick { 1000 } else { 10_000 });
    let depth = args.pipeline_depth.max(1);
    let echo = |conns, size, text, depth, deflate| {
        LoadKind::Echo(EchoSpec {
            conns,
            size,
            text,
            depth,
            deflate,
        })
    };
    let all = vec![
        LoadDef {
            key: "small",
            title: "(i) 100 conns × 20 B text, K = 1".to_owned(),
            short: "(i) 20 B",
            kind: echo(100, 20, true, 1, false),
        },
        LoadDef {
            key: "large",
            title: "(ii) 100 conns × 16 KiB binary, K = 1".to_owned(),
            short: "(ii) 16 KiB",
            kind: echo(100, 16 << 10, false, 1, false),
        },
        LoadDef {
            key: "pipelined",
            title: format!("(iii) 10 conns × 64 B text, pipelined K = {depth}"),
            short: "(iii) pipelined",
            kind: echo(10, 64, true, depth, false),
        },
        LoadDef {
            key: "idle",
            title: format!("(iv) {idle_conns} idle conns: server RSS per conn"),
            short: "(iv) idle memory",
            kind: LoadKind::Idle { conns: idle_conns },
        },
        LoadDef {
            key: "setup",
            title: format!(
                "(v) connection set-up ({} clients at once)",
                args.setup_concurrency
            ),
            short: "(v) set-up",
            kind: LoadKind::Setup {
                concurrency: args.setup_concurrency.max(1),
            },
        },
        LoadDef {
            key: "deflate",
            title: "(vi) 10 conns × 1 MiB text, permessage-deflate, K = 1".to_owned(),
            short: "(vi) 1 MiB deflate",
            kind: echo(10, 1 << 20, true, 1, true),
        },
    ];
    for key in &args.loads {
        if key != "scale" && !all.iter().any(|load| load.key == key) {
            bail!("unknown load {key:?} (small, large, pipelined, idle, setup, deflate, scale)");
        }
    }
    Ok(all
        .into_iter()
        .filter(|load| args.loads.is_empty() || args.loads.iter().any(|key| key == load.key))
        .collect())
}

fn targets(args: &RunArgs) -> anyhow::Result<Vec<Target>> {
    for key in &args.targets {
        if !TARGETS.iter().any(|target| target.key() == key) {
            let keys: Vec<&str> = TARGETS.iter().map(|target| target.key()).collect();
            bail!("unknown target {key:?} ({})", keys.join(", "));
        }
    }
    Ok(TARGETS
        .iter()
        .copied()
        .filter(|target| {
            args.targets.is_empty() || args.targets.iter().any(|key| key == target.key())
        })
        .collect())
}

async fn bench(args: RunArgs, client_workers: usize) -> anyhow::Result<()> {
    let machine = system::Machine::read();
    let date = system::utc_now();
    let loads = loads(&args)?;
    let targets = targets(&args)?;
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup.unwrap_or(if args.quick { 0.3 } else { 2.0 })),
        duration: Duration::from_secs_f64(args.duration.unwrap_or(if args.quick {
            1.0
        } else {
            5.0
        })),
    };
    let workers = args.workers.unwrap_or_else(system::cores);
    let retries = args.retries.unwrap_or(if args.quick { 0 } else { 2 });
    let scale = args.scale || args.loads.iter().any(|key| key == "scale");
    let most_conns = loads
        .iter()
        .map(|load| match load.kind {
            LoadKind::Idle { conns } => conns,
            _ => 1000,
        })
        .chain(scale.then_some(args.scale_conns))
        .max()
        .unwrap_or(1000);
    let limit = system::raise_open_files(most_conns as u64 + 4096);
    if (limit as usize) < most_conns + 1024 {
        eprintln!(
            "warning: the open-file limit is {limit}; loads over about {} connections will fail",
            limit.saturating_sub(1024)
        );
    }
    // Every connection is a descriptor in this process and one in the server's.
    let scale_conns = if scale && args.scale_conns + 256 > limit as usize {
        let capped = (limit as usize).saturating_sub(256);
        eprintln!(
            "warning: the scale load asks for {} connections, but the open-file limit is \
             {limit} (its hard limit cannot be raised here); holding {capped}",
            args.scale_conns
        );
        capped
    } else {
        args.scale_conns
    };
    let sources: Vec<Ipv4Addr> = (1..=args.source_ips.max(1))
        .map(|last| Ipv4Addr::new(127, 0, 0, last))
        .collect();

    let work_dir = work_dir();
    std::fs::create_dir_all(&work_dir)?;
    let launcher = Launcher {
        host_bin: args.host_bin.clone(),
        component: args.component.clone(),
        workers,
        work_dir: work_dir.clone(),
    };
    eprintln!(
        "wasmsocket-bench: {} load(s) × {} target(s) × {rounds} round(s); {} s warm-up, {} s measured",
        loads.len(),
        targets.len(),
        timing.warmup.as_secs_f64(),
        timing.duration.as_secs_f64()
    );

    let mut results = vec![vec![Vec::with_capacity(rounds); targets.len()]; loads.len()];
    for round in 1..=rounds {
        for (index, load) in loads.iter().enumerate() {
            for (column, &target) in targets.iter().enumerate() {
                let mut outcome = Outcome::NotApplicable;
                if load.applies_to(target) {
                    for attempt in 0..=retries {
                        let next = run_one(&launcher, load, target, timing, &sources).await;
                        let busy = |outcome: &Outcome| match outcome {
                            Outcome::Rate(rate) => rate.cpu.other,
                            _ => 0.0,
                        };
                        let others = busy(&next);
                        if attempt == 0 || others < busy(&outcome) {
                            outcome = next;
                        }
                        if others <= args.max_other_cpu || attempt == retries {
                            break;
                        }
                        eprintln!(
                            "  (other processes used {others:.0}% CPU during {} on {}; measuring again)",
                            load.short,
                            target.name()
                        );
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
                eprintln!(
                    "  round {round}/{rounds} · {} · {}: {}",
                    load.title,
                    target.name(),
                    describe(&outcome)
                );
                results[index][column].push(outcome);
            }
        }
    }

    let scale = if scale {
        let mut scale = Vec::new();
        for &target in &targets {
            let outcome = scale_one(&launcher, target, scale_conns, &sources).await;
            eprintln!(
                "  scale · {}: {}",
                target.name(),
                match &outcome {
                    Ok(idle) => format!(
                        "{} conns in {:.1} s, {:.1} KiB/conn",
                        idle.conns,
                        idle.open_seconds,
                        idle.kib_per_conn()
                    ),
                    Err(why) => format!("failed: {why}"),
                }
            );
            scale.push(ScaleResult { target, outcome });
        }
        Some((args.scale_conns, scale_conns, scale))
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&work_dir);

    let command = args.command_line.clone().unwrap_or_else(|| {
        std::env::args()
            .map(|arg| {
                if arg.contains(' ') {
                    format!("'{arg}'")
                } else {
                    arg
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    let report = Report {
        date,
        revision: args.revision.clone(),
        machine,
        command,
        rounds,
        timing,
        workers,
        client_workers,
        loads,
        targets,
        results,
        scale,
    };
    println!("\nRelative to the best native engine (median of {rounds} round(s)):\n");
    println!("{}", report.ratio_table());
    println!("Absolute numbers:\n");
    println!("{}", report.absolute_table());
    if let Some(scale) = report.scale_table() {
        println!("Scale:\n\n{scale}");
    }
    for stop in report.stops() {
        println!("{stop}");
    }
    for failure in report.failures() {
        println!("failed: {failure}");
    }
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let chart = out.with_extension("svg");
        let chart_name = chart
            .file_name()
            .context("--out needs a file name")?
            .to_string_lossy()
            .into_owned();
        std::fs::write(&chart, report.chart_svg()?)
            .with_context(|| format!("writing {}", chart.display()))?;
        std::fs::write(out, report.markdown(&chart_name))
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {} and {}", out.display(), chart.display());
    }
    Ok(())
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Rate(rate) => {
            let per_item = |percent| report::per_item_us(percent, rate.per_second);
            format!(
                "{:.0}/s, p50 {:.0} µs, p99 {:.0} µs, CPU server {:.0}% generator {:.0}% \
                 others {:.0}%, server CPU each {:.2} µs user {:.2} µs kernel",
                rate.per_second,
                rate.p50_us,
                rate.p99_us,
                rate.cpu.server,
                rate.cpu.client,
                rate.cpu.other,
                per_item(rate.cpu.server_user),
                per_item(rate.cpu.server_kernel()),
            )
        }
        Outcome::Idle(idle) => format!(
            "{} conns, {:.1} KiB/conn ({} → {} KiB)",
            idle.conns,
            idle.kib_per_conn(),
            idle.rss_before_kib,
            idle.rss_after_kib
        ),
        Outcome::NotApplicable => "n/a".to_owned(),
        Outcome::Failed(why) => format!("FAILED: {why}"),
    }
}

/// Starts `target`, runs `load` against it, stops it.
async fn run_one(
    launcher: &Launcher,
    load: &LoadDef,
    target: Target,
    timing: Timing,
    sources: &[Ipv4Addr],
) -> Outcome {
    let server = match launcher.start(target).await {
        Ok(server) => server,
        Err(error) => return Outcome::Failed(format!("{error:#}")),
    };
    let (addr, path, pid) = (server.addr, server.path, server.pid);
    let outcome =
        match load.kind {
            LoadKind::Echo(spec) => load::echo(addr, path, spec, timing, pid)
                .await
                .map(Outcome::Rate),
            LoadKind::Setup { concurrency } => load::setup(addr, path, concurrency, timing, pid)
                .await
                .map(Outcome::Rate),
            LoadKind::Idle { conns } => load::idle(addr, path, conns, sources, pid, true)
                .await
                .map(|(mut idle, streams)| {
                    close_now(streams);
                    explain_stop(&mut idle, &server);
                    Outcome::Idle(idle)
                }),
        };
    let outcome = outcome.unwrap_or_else(|error| {
        let log = server.log_tail();
        Outcome::Failed(if log.is_empty() {
            format!("{error:#}")
        } else {
            format!("{error:#} (server log: {log})")
        })
    });
    server.stop().await;
    outcome
}

/// The scale load: `conns` idle connections to one fresh server.
async fn scale_one(
    launcher: &Launcher,
    target: Target,
    conns: usize,
    sources: &[Ipv4Addr],
) -> Result<load::Idle, String> {
    let server = launcher
        .start(target)
        .await
        .map_err(|error| format!("{error:#}"))?;
    let result = load::idle(server.addr, server.path, conns, sources, server.pid, true).await;
    let result = match result {
        Ok((mut idle, streams)) => {
            close_now(streams);
            explain_stop(&mut idle, &server);
            Ok(idle)
        }
        Err(error) => Err(format!("{error:#} {}", server.log_tail())),
    };
    server.stop().await;
    result
}

/// Adds the server's last log line to the reason an idle load stopped early.
fn explain_stop(idle: &mut load::Idle, server: &targets::Server) {
    if let Some(why) = &mut idle.stopped {
        let log = server.log_tail();
        if let Some(last) = log.lines().last() {
            // Without the timestamp.
            let last = last.split_once("Z ").map_or(last, |(_, rest)| rest);
            why.push_str("; server log: ");
            why.push_str(last.trim());
        }
    }
}

/// Drops connections with a reset, so thousands of them leave no TIME_WAIT behind to
/// hold the next load's ports.
fn close_now(streams: Vec<tokio::net::TcpStream>) {
    for stream in streams {
        let _ = stream.set_zero_linger();
    }
}
