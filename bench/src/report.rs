//! The results: medians over rounds, ratios to the best native engine, the Markdown
//! report and its SVG chart.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::load::{EchoSpec, Idle, Rate, Timing};
use crate::system::Machine;
use crate::targets::Target;

/// A load as the report names it.
#[derive(Debug, Clone)]
pub(crate) struct LoadDef {
    /// Short name for `--loads`.
    pub(crate) key: &'static str,
    /// Row name.
    pub(crate) title: String,
    /// Chart label.
    pub(crate) short: &'static str,
    /// What to run.
    pub(crate) kind: LoadKind,
}

/// What a load runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LoadKind {
    /// Echo messages.
    Echo(EchoSpec),
    /// Open, upgrade and close connections.
    Setup {
        /// Clients doing it at once.
        concurrency: usize,
    },
    /// Hold idle connections and read the server's RSS.
    Idle {
        /// Connections.
        conns: usize,
    },
}

impl LoadDef {
    /// Whether a bigger headline number is better (rates), or a smaller (memory).
    fn higher_is_better(&self) -> bool {
        !matches!(self.kind, LoadKind::Idle { .. })
    }

    fn unit(&self) -> &'static str {
        match self.kind {
            LoadKind::Echo(_) => "msg/s",
            LoadKind::Setup { .. } => "conn/s",
            LoadKind::Idle { .. } => "KiB/conn",
        }
    }

    /// Whether `target` can run this load.
    pub(crate) fn applies_to(&self, target: Target) -> bool {
        match self.kind {
            LoadKind::Echo(spec) if spec.deflate => target.supports_deflate(),
            _ => true,
        }
    }
}

/// One load on one target in one round.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// A rate (echo, set-up).
    Rate(Rate),
    /// Idle memory.
    Idle(Idle),
    /// The target does not implement what the load needs.
    NotApplicable,
    /// It failed; why.
    Failed(String),
}

impl Outcome {
    fn headline(&self) -> Option<f64> {
        match self {
            Self::Rate(rate) => Some(rate.per_second),
            Self::Idle(idle) => Some(idle.kib_per_conn()),
            Self::NotApplicable | Self::Failed(_) => None,
        }
    }
}

/// The scale run of one target.
#[derive(Debug, Clone)]
pub(crate) struct ScaleResult {
    /// The target.
    pub(crate) target: Target,
    /// What happened.
    pub(crate) outcome: Result<Idle, String>,
}

/// Everything a run produced, and how it was run.
#[derive(Debug)]
pub(crate) struct Report {
    /// When.
    pub(crate) date: String,
    /// The revision everything was built from, if known.
    pub(crate) revision: Option<String>,
    /// The machine.
    pub(crate) machine: Machine,
    /// The command that produced it.
    pub(crate) command: String,
    /// Rounds run.
    pub(crate) rounds: usize,
    /// Warm-up and measured window of each rate load.
    pub(crate) timing: Timing,
    /// Tokio worker threads of every server.
    pub(crate) workers: usize,
    /// Tokio worker threads of the load generator.
    pub(crate) client_workers: usize,
    /// The loads, in row order.
    pub(crate) loads: Vec<LoadDef>,
    /// The targets, in column order.
    pub(crate) targets: Vec<Target>,
    /// `results[load][target][round]`.
    pub(crate) results: Vec<Vec<Vec<Outcome>>>,
    /// The scale run, when asked for: connections asked for, connections the
    /// open-file limit allowed, results.
    pub(crate) scale: Option<(usize, usize, Vec<ScaleResult>)>,
}

/// The median of a cell's rounds.
#[derive(Debug, Clone, Copy)]
struct Cell {
    headline: f64,
    p50_us: f64,
    p99_us: f64,
    server_cpu: f64,
    client_cpu: f64,
    other_cpu: f64,
    /// Server CPU time per message (or connection), µs: in user space, in the kernel.
    user_us: f64,
    kernel_us: f64,
    /// An idle round opened fewer connections than asked for (see the notes).
    short: bool,
}

enum Summary {
    Value(Cell),
    NotApplicable,
    Failed,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn summarize(rounds: &[Outcome]) -> Summary {
    let rates: Vec<&Rate> = rounds
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Rate(rate) => Some(rate),
            _ => None,
        })
        .collect();
    let headlines: Vec<f64> = rounds.iter().filter_map(Outcome::headline).collect();
    if headlines.is_empty() {
        return match rounds.first() {
            Some(Outcome::Failed(_)) => Summary::Failed,
            _ => Summary::NotApplicable,
        };
    }
    let of = |get: fn(&Rate) -> f64| median(rates.iter().map(|rate| get(rate)).collect());
    Summary::Value(Cell {
        headline: median(headlines),
        p50_us: of(|rate| rate.p50_us),
        p99_us: of(|rate| rate.p99_us),
        server_cpu: of(|rate| rate.cpu.server),
        client_cpu: of(|rate| rate.cpu.client),
        other_cpu: of(|rate| rate.cpu.other),
        user_us: of(|rate| per_item_us(rate.cpu.server_user, rate.per_second)),
        kernel_us: of(|rate| per_item_us(rate.cpu.server_kernel(), rate.per_second)),
        short: rounds
            .iter()
            .any(|outcome| matches!(outcome, Outcome::Idle(idle) if idle.stopped.is_some())),
    })
}

/// Microseconds of CPU per item from a CPU share (percent of one core) and a rate.
pub(crate) fn per_item_us(percent: f64, per_second: f64) -> f64 {
    if per_second > 0.0 {
        percent / 100.0 / per_second * 1e6
    } else {
        f64::NAN
    }
}

fn si(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 1000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// [`micros`] with two significant digits below 10 µs (CPU time per message).
fn fine_micros(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 100.0 {
        format!("{us:.1} µs")
    } else {
        micros(us)
    }
}

fn headline_text(load: &LoadDef, value: f64) -> String {
    match load.kind {
        LoadKind::Idle { .. } => format!("{value:.1} KiB"),
        _ => si(value),
    }
}

impl Report {
    fn summaries(&self) -> Vec<Vec<Summary>> {
        self.results
            .iter()
            .map(|row| row.iter().map(|rounds| summarize(rounds)).collect())
            .collect()
    }

    /// Per load: the best native engine's headline value.
    fn best_native(&self, summaries: &[Vec<Summary>]) -> Vec<Option<f64>> {
        self.loads
            .iter()
            .zip(summaries)
            .map(|(load, row)| {
                let natives = self
                    .targets
                    .iter()
                    .zip(row)
                    .filter(|(target, _)| target.is_native())
                    .filter_map(|(_, summary)| match summary {
                        Summary::Value(cell) => Some(cell.headline),
                        _ => None,
                    });
                if load.higher_is_better() {
                    natives.reduce(f64::max)
                } else {
                    natives.reduce(f64::min)
                }
            })
            .collect()
    }

    fn header(&self, first: &[&str]) -> String {
        let mut out = String::from("|");
        for name in first {
            let _ = write!(out, " {name} |");
        }
        for target in &self.targets {
            let _ = write!(out, " {} |", target.name());
        }
        out.push_str("\n|");
        for _ in 0..first.len() + self.targets.len() {
            out.push_str("---|");
        }
        out.push('\n');
        out
    }

    /// The table of ratios to the best native engine (with the values).
    pub(crate) fn ratio_table(&self) -> String {
        let summaries = self.summaries();
        let best = self.best_native(&summaries);
        let mut out = self.header(&["load", "unit"]);
        for ((load, row), best) in self.loads.iter().zip(&summaries).zip(best) {
            let _ = write!(out, "| {} | {} |", load.title, load.unit());
            for summary in row {
                let cell = match (summary, best) {
                    (Summary::Value(cell), Some(best)) => format!(
                        "**{:.2}×** ({}){}",
                        cell.headline / best,
                        headline_text(load, cell.headline),
                        if cell.short { " †" } else { "" }
                    ),
                    (Summary::Value(cell), None) => headline_text(load, cell.headline),
                    (Summary::NotApplicable, _) => "n/a".to_owned(),
                    (Summary::Failed, _) => "failed".to_owned(),
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }

    /// Absolute numbers: the headline, latency and CPU use of every cell.
    pub(crate) fn absolute_table(&self) -> String {
        let summaries = self.summaries();
        let mut out = self.header(&["load", "metric"]);
        for (index, (load, row)) in self.loads.iter().zip(&summaries).enumerate() {
            let mut line = |title: &str, metric: &str, text: &dyn Fn(usize, &Cell) -> String| {
                let _ = write!(out, "| {title} | {metric} |");
                for (target, summary) in row.iter().enumerate() {
                    let text = match summary {
                        Summary::Value(cell) => text(target, cell),
                        Summary::NotApplicable => "n/a".to_owned(),
                        Summary::Failed => "failed".to_owned(),
                    };
                    let _ = write!(out, " {text} |");
                }
                out.push('\n');
            };
            match load.kind {
                LoadKind::Idle { .. } => {
                    line(&load.title, load.unit(), &|_, cell| {
                        format!("{:.1}{}", cell.headline, if cell.short { " †" } else { "" })
                    });
                    line("", "server RSS before → after (MiB)", &|target, _| {
                        self.rss_text(index, target)
                    });
                }
                LoadKind::Echo(_) | LoadKind::Setup { .. } => {
                    line(&load.title, load.unit(), &|_, cell| {
                        format!("{:.0}", cell.headline)
                    });
                    let latency = if matches!(load.kind, LoadKind::Setup { .. }) {
                        "p50 / p99 connect → 101"
                    } else {
                        "p50 / p99 round trip"
                    };
                    line("", latency, &|_, cell| {
                        format!("{} / {}", micros(cell.p50_us), micros(cell.p99_us))
                    });
                    line("", "CPU server / generator / others", &|_, cell| {
                        format!(
                            "{:.0}% / {:.0}% / {:.0}%",
                            cell.server_cpu, cell.client_cpu, cell.other_cpu
                        )
                    });
                    let per_item = if matches!(load.kind, LoadKind::Setup { .. }) {
                        "server CPU per connection: user / kernel"
                    } else {
                        "server CPU per message: user / kernel"
                    };
                    line("", per_item, &|_, cell| {
                        format!(
                            "{} / {}",
                            fine_micros(cell.user_us),
                            fine_micros(cell.kernel_us)
                        )
                    });
                }
            }
        }
        out
    }

    /// RSS before and after of the idle round with the median per-connection value.
    fn rss_text(&self, load: usize, target: usize) -> String {
        let mut idles: Vec<&Idle> = self.results[load][target]
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Idle(idle) => Some(idle),
                _ => None,
            })
            .collect();
        idles.sort_by(|a, b| a.kib_per_conn().total_cmp(&b.kib_per_conn()));
        idles.get(idles.len() / 2).map_or(String::new(), |idle| {
            format!(
                "{:.1} → {:.1}",
                idle.rss_before_kib as f64 / 1024.0,
                idle.rss_after_kib as f64 / 1024.0
            )
        })
    }

    /// Every round's headline value, to show the spread behind the medians.
    pub(crate) fn rounds_table(&self) -> String {
        let mut out = self.header(&["load"]);
        for (load, row) in self.loads.iter().zip(&self.results) {
            let _ = write!(out, "| {} ({}) |", load.title, load.unit());
            for rounds in row {
                let values: Vec<String> = rounds
                    .iter()
                    .map(|outcome| match outcome {
                        Outcome::Failed(_) => "failed".to_owned(),
                        outcome => outcome
                            .headline()
                            .map_or("n/a".to_owned(), |value| headline_text(load, value)),
                    })
                    .collect();
                let _ = write!(out, " {} |", values.join(" · "));
            }
            out.push('\n');
        }
        out
    }

    /// Idle loads that opened fewer connections than asked for, with the reason.
    pub(crate) fn stops(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (load, row) in self.loads.iter().zip(&self.results) {
            let LoadKind::Idle { conns } = load.kind else {
                continue;
            };
            for (target, rounds) in self.targets.iter().zip(row) {
                for (round, outcome) in rounds.iter().enumerate() {
                    if let Outcome::Idle(Idle {
                        conns: opened,
                        stopped: Some(why),
                        ..
                    }) = outcome
                    {
                        out.push(format!(
                            "† {} on {}, round {}: opened {opened} of {conns} connections \
                             (per-connection memory is over those): {why}",
                            load.short,
                            target.name(),
                            round + 1
                        ));
                    }
                }
            }
        }
        out
    }

    /// The failures, with their reasons.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (load, row) in self.loads.iter().zip(&self.results) {
            for (target, rounds) in self.targets.iter().zip(row) {
                for (round, outcome) in rounds.iter().enumerate() {
                    if let Outcome::Failed(why) = outcome {
                        out.push(format!(
                            "{} on {}, round {}: {why}",
                            load.title,
                            target.name(),
                            round + 1
                        ));
                    }
                }
            }
        }
        out
    }

    /// The scale table, if the scale load ran.
    pub(crate) fn scale_table(&self) -> Option<String> {
        let (asked, allowed, results) = self.scale.as_ref()?;
        let mut out = if allowed < asked {
            format!(
                "{asked} connections asked for; the open-file limit (RLIMIT_NOFILE, whose \
                 hard limit this process may not raise here) allows {allowed} per process."
            )
        } else {
            format!("{asked} connections asked for.")
        };
        out.push_str(
            " Opened with 128 in flight from 127.0.0.1–8; each upgraded and echoed one \
             20-byte message.\n\n\
             | target | open | opened in | KiB/conn | server RSS |\n|---|---|---|---|---|\n",
        );
        for result in results {
            let _ = match &result.outcome {
                Ok(idle) => writeln!(
                    out,
                    "| {} | {}{} | {:.1} s ({}/s) | {:.1} | {:.0} MiB |",
                    result.target.name(),
                    idle.conns,
                    idle.stopped
                        .as_ref()
                        .map_or(String::new(), |why| format!(" (stopped: {why})")),
                    idle.open_seconds,
                    si(idle.conns as f64 / idle.open_seconds.max(1e-9)),
                    idle.kib_per_conn(),
                    idle.rss_after_kib as f64 / 1024.0,
                ),
                Err(why) => writeln!(out, "| {} | failed: {why} | | | |", result.target.name()),
            };
        }
        Some(out)
    }

    /// The whole report as Markdown; `chart` is the SVG's file name beside it.
    pub(crate) fn markdown(&self, chart: &str) -> String {
        let machine = &self.machine;
        let mut out = String::new();
        let _ = write!(
            out,
            "# Benchmarks\n\n\
             Generated by `wasmsocket-bench` (`bench/`); rerun the command below to \
             regenerate this file and its chart.\n\n\
             - **Date:** {date}\n\
             - **Command:** `{command}`{revision}\n\
             - **Machine:** {cpu}, {cores} cores, {memory:.0} GiB, Linux {kernel} \
             (1-minute load average at the start: {load})\n\
             - **Method:** every target is a separate process on 127.0.0.1, started \
             afresh for each load and round; servers run a tokio multi-thread runtime \
             with {workers} workers and an event interval of {event_interval} (the value the \
             `wasmsocket` binary sets), the load \
             generator one with {client_workers} (tokio's defaults otherwise), all \
             sharing the machine's {cores} cores{nice}. Rates are measured for {duration} s \
             after a {warmup} s warm-up; each number is the median of {rounds} round(s). \
             The first echo on every connection is checked byte for byte.\n\n",
            date = self.date,
            command = self.command,
            revision = self
                .revision
                .as_ref()
                .map_or(String::new(), |revision| format!(
                    " (host, echo component and bench built from `{revision}`)"
                )),
            cpu = machine.cpu,
            cores = machine.cores,
            memory = machine.memory_gib,
            kernel = machine.kernel,
            load = machine.load_average,
            nice = if machine.nice == 0 {
                String::new()
            } else {
                format!(
                    " (at niceness {}, so as not to crowd out other users)",
                    machine.nice
                )
            },
            workers = self.workers,
            event_interval = crate::serve::EVENT_INTERVAL,
            client_workers = self.client_workers,
            duration = self.timing.duration.as_secs_f64(),
            warmup = self.timing.warmup.as_secs_f64(),
            rounds = self.rounds,
        );
        let _ = write!(
            out,
            "## Relative to the best native engine\n\n\
             Each cell is the target's number divided by the best native engine's on \
             that load (in bold; the value itself in brackets). For rates higher is \
             better; for memory per idle connection lower is better. `n/a`: the engine \
             has no permessage-deflate.\n\n{}\n![Throughput and memory relative to the \
             best native engine]({chart})\n\n",
            self.ratio_table(),
        );
        let _ = write!(
            out,
            "## Absolute numbers\n\n\
             Medians of the rounds. Round trip: from writing a message to reading its \
             echo (pipelined: the message's own echo). CPU: process CPU time over the \
             measured window (100% = one core); \"others\" is the rest of the machine (other \
             users of the shared cores), which the bench keeps low by measuring again \
             when it is not. Server CPU per message (per connection for set-up): the \
             server's CPU time over the messages echoed, split into user space and the \
             kernel (from `/proc/PID/stat`); the throughput of these loads follows the sum \
             of the server's and the generator's, as they share the cores.\n\n{}\n",
            self.absolute_table()
        );
        let _ = write!(out, "## Every round\n\n{}\n", self.rounds_table());
        if let Some(scale) = self.scale_table() {
            let _ = write!(out, "## Scale\n\n{scale}\n");
        }
        for (title, items) in [("Notes", self.stops()), ("Failures", self.failures())] {
            if !items.is_empty() {
                let _ = write!(out, "## {title}\n\n");
                for item in items {
                    let _ = writeln!(out, "- {item}");
                }
                out.push('\n');
            }
        }
        out.push_str(LOADS_EXPLAINED);
        out
    }

    /// A grouped bar chart: each target relative to the best native engine per load
    /// (memory inverted, so higher is better everywhere).
    pub(crate) fn chart_svg(&self) -> anyhow::Result<String> {
        let summaries = self.summaries();
        let best = self.best_native(&summaries);
        let mut bars = Vec::new();
        let mut missing = Vec::new();
        for (index, ((load, row), best)) in self.loads.iter().zip(&summaries).zip(&best).enumerate()
        {
            for (target, summary) in row.iter().enumerate() {
                if let (Summary::Value(cell), Some(best)) = (summary, best) {
                    let relative = if load.higher_is_better() {
                        cell.headline / best
                    } else {
                        best / cell.headline
                    };
                    bars.push((index, target, relative));
                } else {
                    missing.push((index, target));
                }
            }
        }
        // Room above the bars for the legend.
        let top = (bars
            .iter()
            .map(|&(_, _, value)| value)
            .fold(1.0f64, f64::max)
            * 1.15)
            .max(1.5);
        let loads = self.loads.len().max(1);
        let targets = self.targets.len().max(1);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "Relative to the best native engine per load (higher is better; memory inverted)",
                    ("sans-serif", 18),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..loads as f64, 0f64..top)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .y_max_light_lines(1)
                .disable_x_axis()
                .y_desc("× best native")
                .draw()?;
            let palette = [
                RGBColor(0xd9, 0x5f, 0x02),
                RGBColor(0x1b, 0x9e, 0x77),
                RGBColor(0x75, 0x70, 0xb3),
                RGBColor(0x66, 0xa6, 0x1e),
                RGBColor(0xe7, 0x29, 0x8a),
                RGBColor(0xa6, 0x76, 0x1d),
            ];
            let width = 0.8 / targets as f64;
            for (column, target) in self.targets.iter().enumerate() {
                let color = palette[column % palette.len()];
                chart
                    .draw_series(bars.iter().filter(|bar| bar.1 == column).map(
                        |&(load, _, value)| {
                            let x = load as f64 + 0.1 + column as f64 * width;
                            Rectangle::new([(x, 0.0), (x + width * 0.9, value)], color.filled())
                        },
                    ))?
                    .label(target.name())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                for &(load, _, value) in bars.iter().filter(|bar| bar.1 == column) {
                    let x = load as f64 + 0.1 + (column as f64 + 0.45) * width;
                    let (px, py) = chart.backend_coord(&(x, value));
                    root.draw(&Text::new(
                        format!("{value:.2}"),
                        (px - 10, py - 14),
                        ("sans-serif", 11),
                    ))?;
                }
            }
            for &(load, column) in &missing {
                let x = load as f64 + 0.1 + (column as f64 + 0.45) * width;
                let (px, py) = chart.backend_coord(&(x, 0.0));
                root.draw(&Text::new("n/a", (px - 8, py - 16), ("sans-serif", 11)))?;
            }
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 1.0), (loads as f64, 1.0)],
                BLACK.stroke_width(1),
            )))?;
            for (index, load) in self.loads.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(index as f64 + 0.5, 0.0));
                root.draw(&Text::new(
                    load.short,
                    (px - 3 * load.short.len() as i32, py + 10),
                    ("sans-serif", 13),
                ))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
        }
        Ok(svg)
    }
}

const LOADS_EXPLAINED: &str = "## The loads\n\n\
- **Echo loads** ((i), (ii), (iii), (vi)): every connection sends a message and waits \
for its echo (K = 1), or keeps K messages in flight (pipelined); messages per second \
count echoes received by all connections together.\n\
- **(iv) Idle memory**: the server's `VmRSS` (`/proc/PID/status`) with the connections \
open, minus its `VmRSS` before them (after 100 connections were opened and closed, so \
one-time set-up is not counted), divided by their number. Each connection has upgraded \
and echoed one 20-byte message.\n\
- **(v) Set-up**: clients open a TCP connection, upgrade, send a close frame and wait \
for the server to close; connections per second count complete cycles. For the host a \
cycle includes instantiating the component and the guest's upgrade hook.\n\
- **(vi) Compression**: the load generator offers `permessage-deflate; \
client_no_context_takeover` and sends each 1 MiB JSON-like text message compressed on \
its own; the server inflates it, and deflates its echo (with context takeover).\n\n\
The load generator (`bench/src/load.rs`) uses raw tokio sockets and its own upgrade; \
frames are masked once before the run and written from that buffer, echoed frames are \
parsed in place and their payloads skipped, and latencies go to an HDR histogram, so it \
allocates nothing per message. The native servers (`bench/src/serve.rs`) share one \
minimal HTTP upgrade and differ only in the framing engine; yawc runs with the host's \
engine settings but yawc's default buffers (an 8 KiB read buffer, kept while idle; the \
host reads 64 KiB at a time and releases its buffers while idle).\n\n\
**wasmtime floor** is a bound, not a reference: yawc with all the host's engine \
settings, plus what a host that hands each message to a WebAssembly handler in an \
instance of its own does at the least. Per connection a wasmtime store and an \
instance of a core module (wasmtime configured as the host configures it, without \
the host's pool of linear memories); per message the payload copied into the \
instance's memory, one call that returns it in place, and the reply copied out (and \
checked as UTF-8 when it is text). No component model, no allocator in the guest, no \
bookkeeping. In the one-message echo loads, (i), (ii) and (vi), what separates the \
host from this column is the host's own cost, and what separates this column from \
yawc is wasmtime's and the buffers'. Elsewhere it is no bound: the host batches \
pipelined replies (iii), and pools linear memories or shares instances ((iv), (v)).\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn cpu_per_message() {
        // One core busy over 250,000 messages a second: 4 µs each.
        assert_eq!(per_item_us(100.0, 250_000.0), 4.0);
        assert!(per_item_us(50.0, 0.0).is_nan());
        assert_eq!(fine_micros(2.554), "2.55 µs");
        assert_eq!(fine_micros(42.0), "42.0 µs");
        assert_eq!(fine_micros(1500.0), "1.5 ms");
    }
}
