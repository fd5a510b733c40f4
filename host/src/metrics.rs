//! Prometheus metrics, served at the admin address's `/metrics` in the text
//! exposition format. Counters are plain atomics updated where things happen; the
//! text is rendered on each scrape. The counters every message bumps are kept once per
//! worker thread (see [`Hot`]) and summed when rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Why an upgrade was refused, as the `reason` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No or bad credentials (401).
    Unauthorized,
    /// A required scope is missing (403).
    Forbidden,
    /// The service is at `max_connections` (503).
    ConnectionLimit,
    /// The guest's upgrade hook said no.
    GuestRejected,
    /// The guest trapped in its upgrade hook or returned something invalid (500).
    GuestFailed,
    /// The host could not make another instance: out of memory or mappings (503).
    Capacity,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::Unauthorized,
        Refusal::Forbidden,
        Refusal::ConnectionLimit,
        Refusal::GuestRejected,
        Refusal::GuestFailed,
        Refusal::Capacity,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::GuestRejected => "guest_rejected",
            Refusal::GuestFailed => "guest_failed",
            Refusal::Capacity => "capacity",
        }
    }
}

/// Upper bounds of the callback latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
    1.0,
];

/// Copies of the per-message counters: each thread bumps its own, so two cores never
/// fight over one cache line on every message (measured: six shared atomics per
/// message were a visible share of a message's cost on two cores).
const SHARDS: usize = 8;

/// One thread's share of a service's per-message counters, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Hot {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_overflow: AtomicU64,
    latency_sum_ns: AtomicU64,
}

/// This thread's shard: threads are numbered in the order they first count.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// One service's numbers.
#[derive(Default)]
pub(crate) struct ServiceMetrics {
    open: AtomicI64,
    accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// What every message counts, by thread.
    hot: [Hot; SHARDS],
    /// (code, closed by the peer) → connections
    closes: Mutex<BTreeMap<(u16, bool), u64>>,
    traps: AtomicU64,
    deadlines: AtomicU64,
    /// Bytes of linear memory the service's instances hold.
    pub(crate) memory: Arc<AtomicI64>,
}

impl ServiceMetrics {
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection that was accepted has ended.
    pub(crate) fn ended(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, why: Refusal) {
        let index = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[index].fetch_add(1, Ordering::Relaxed);
    }

    fn hot(&self) -> &Hot {
        &self.hot[shard()]
    }

    /// The sum over the threads of one per-message counter.
    fn total(&self, counter: impl Fn(&Hot) -> &AtomicU64) -> u64 {
        self.hot
            .iter()
            .map(|hot| counter(hot).load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn received(&self, bytes: usize) {
        let hot = self.hot();
        hot.messages_in.fetch_add(1, Ordering::Relaxed);
        hot.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, bytes: usize) {
        let hot = self.hot();
        hot.messages_out.fetch_add(1, Ordering::Relaxed);
        hot.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A connection ended with close `code`, sent by the peer or by the host.
    pub(crate) fn closed(&self, code: u16, by_peer: bool) {
        *self
            .closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((code, by_peer))
            .or_default() += 1;
    }

    /// A guest call trapped; `deadline` when it ran out of CPU time.
    pub(crate) fn trapped(&self, deadline: bool) {
        self.traps.fetch_add(1, Ordering::Relaxed);
        if deadline {
            self.deadlines.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn callback_took(&self, took: Duration) {
        let hot = self.hot();
        let seconds = took.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            Some(bucket) => hot.latency[bucket].fetch_add(1, Ordering::Relaxed),
            None => hot.latency_overflow.fetch_add(1, Ordering::Relaxed),
        };
        hot.latency_sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The Redis relay's numbers (host-wide; rendered only with the Redis backend).
#[derive(Default)]
pub(crate) struct RelayMetrics {
    up: AtomicI64,
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
}

impl RelayMetrics {
    /// Whether both Redis connections are up.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up.into(), Ordering::Relaxed);
    }

    /// Messages Redis accepted from this host.
    pub(crate) fn published(&self, count: u64) {
        self.published.fetch_add(count, Ordering::Relaxed);
    }

    /// A message from another host, through Redis.
    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages for the other hosts that were dropped (or may have been lost).
    pub(crate) fn dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn dropped_count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn received_count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Every service's metrics, by path, and the host's topic relay's.
#[derive(Default)]
pub(crate) struct Metrics {
    services: RwLock<BTreeMap<String, Arc<ServiceMetrics>>>,
    /// Always counted; rendered when `relay_enabled`.
    pub(crate) relay: Arc<RelayMetrics>,
    relay_enabled: std::sync::atomic::AtomicBool,
}

impl Metrics {
    /// The metrics of the service at `path`, created on first use and kept across
    /// reloads and re-attachments.
    pub(crate) fn service(&self, path: &str) -> Arc<ServiceMetrics> {
        if let Some(found) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return found.clone();
        }
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_owned())
            .or_default()
            .clone()
    }

    /// Renders the Redis relay's metrics too.
    pub(crate) fn enable_relay(&self) {
        self.relay_enabled.store(true, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of everything.
    pub(crate) fn render(&self) -> String {
        let guard = self.services.read().unwrap_or_else(|e| e.into_inner());
        let services: Vec<(String, &ServiceMetrics)> = guard
            .iter()
            .map(|(path, metrics)| (escape(path), &**metrics))
            .collect();
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let o = &mut out;

        header(
            o,
            "wasmsocket_connections_open",
            "gauge",
            "Open WebSocket connections.",
        );
        for (s, m) in &services {
            let open = m.open.load(Ordering::Relaxed);
            let _ = writeln!(o, "wasmsocket_connections_open{{service=\"{s}\"}} {open}");
        }

        let name = "wasmsocket_upgrades_total";
        header(
            o,
            name,
            "counter",
            "Upgrade requests, by outcome and refusal reason.",
        );
        for (s, m) in &services {
            let _ = writeln!(
                o,
                "{name}{{service=\"{s}\",outcome=\"accepted\",reason=\"\"}} {}",
                load(&m.accepted)
            );
            for (why, count) in Refusal::ALL.iter().zip(&m.refused) {
                let _ = writeln!(
                    o,
                    "{name}{{service=\"{s}\",outcome=\"refused\",reason=\"{}\"}} {}",
                    why.label(),
                    load(count)
                );
            }
        }

        for (name, help, bytes) in [
            (
                "wasmsocket_messages_total",
                "Text and binary messages, by direction.",
                false,
            ),
            (
                "wasmsocket_message_bytes_total",
                "Message payload bytes, by direction.",
                true,
            ),
        ] {
            header(o, name, "counter", help);
            for (s, m) in &services {
                let (received, sent) = if bytes {
                    (m.total(|h| &h.bytes_in), m.total(|h| &h.bytes_out))
                } else {
                    (m.total(|h| &h.messages_in), m.total(|h| &h.messages_out))
                };
                for (direction, count) in [("in", received), ("out", sent)] {
                    let _ = writeln!(
                        o,
                        "{name}{{service=\"{s}\",direction=\"{direction}\"}} {count}"
                    );
                }
            }
        }

        let name = "wasmsocket_closes_total";
        header(
            o,
            name,
            "counter",
            "Connections ended, by close code and the side that closed (1006: no close frame).",
        );
        for (s, m) in &services {
            let closes = m.closes.lock().unwrap_or_else(|e| e.into_inner());
            for ((code, by_peer), count) in closes.iter() {
                let side = if *by_peer { "peer" } else { "host" };
                let _ = writeln!(
                    o,
                    "{name}{{service=\"{s}\",code=\"{code}\",by=\"{side}\"}} {count}"
                );
            }
        }

        for (name, help, pick) in [
            (
                "wasmsocket_guest_traps_total",
                "Guest calls that trapped (panics, limits, deadlines).",
                (|m: &ServiceMetrics| &m.traps) as fn(&ServiceMetrics) -> &AtomicU64,
            ),
            (
                "wasmsocket_guest_deadline_exceeded_total",
                "Guest calls interrupted for running past callback_timeout.",
                |m: &ServiceMetrics| &m.deadlines,
            ),
        ] {
            header(o, name, "counter", help);
            for (s, m) in &services {
                let _ = writeln!(o, "{name}{{service=\"{s}\"}} {}", load(pick(m)));
            }
        }

        let name = "wasmsocket_guest_memory_bytes";
        header(
            o,
            name,
            "gauge",
            "Linear memory held by the service's instances.",
        );
        for (s, m) in &services {
            let bytes = m.memory.load(Ordering::Relaxed);
            let _ = writeln!(o, "{name}{{service=\"{s}\"}} {bytes}");
        }

        let name = "wasmsocket_callback_duration_seconds";
        header(
            o,
            name,
            "histogram",
            "Time spent in guest session callbacks.",
        );
        for (s, m) in &services {
            let mut cumulative = 0;
            for (bucket, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += m.total(|h| &h.latency[bucket]);
                let _ = writeln!(
                    o,
                    "{name}_bucket{{service=\"{s}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += m.total(|h| &h.latency_overflow);
            let sum = m.total(|h| &h.latency_sum_ns) as f64 / 1e9;
            let _ = writeln!(
                o,
                "{name}_bucket{{service=\"{s}\",le=\"+Inf\"}} {cumulative}\n\
                 {name}_sum{{service=\"{s}\"}} {sum}\n\
                 {name}_count{{service=\"{s}\"}} {cumulative}"
            );
        }

        if self.relay_enabled.load(Ordering::Relaxed) {
            self.render_relay(o);
        }
        out
    }

    fn render_relay(&self, o: &mut String) {
        let relay = &*self.relay;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let name = "wasmsocket_topics_redis_up";
        header(
            o,
            name,
            "gauge",
            "1 while both Redis connections of the topics (publish, subscribe) are up.",
        );
        let _ = writeln!(o, "{name} {}", relay.up.load(Ordering::Relaxed));
        let name = "wasmsocket_topics_redis_messages_total";
        header(
            o,
            name,
            "counter",
            "Topic messages published to Redis (out) and received from other hosts (in).",
        );
        let _ = writeln!(
            o,
            "{name}{{direction=\"out\"}} {}\n{name}{{direction=\"in\"}} {}",
            load(&relay.published),
            load(&relay.received)
        );
        let name = "wasmsocket_topics_redis_dropped_total";
        header(
            o,
            name,
            "counter",
            "Topic messages for other hosts dropped: Redis unreachable or not keeping up.",
        );
        let _ = writeln!(o, "{name} {}", load(&relay.dropped));
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::default();
        let echo = metrics.service("/echo");
        echo.accepted();
        echo.refused(Refusal::Forbidden);
        echo.received(5);
        echo.sent(7);
        echo.closed(1000, true);
        echo.trapped(true);
        echo.callback_took(Duration::from_micros(20));
        echo.callback_took(Duration::from_secs(3));
        let text = metrics.render();
        for line in [
            "wasmsocket_connections_open{service=\"/echo\"} 1",
            "wasmsocket_upgrades_total{service=\"/echo\",outcome=\"refused\",reason=\"forbidden\"} 1",
            "wasmsocket_message_bytes_total{service=\"/echo\",direction=\"out\"} 7",
            "wasmsocket_closes_total{service=\"/echo\",code=\"1000\",by=\"peer\"} 1",
            "wasmsocket_guest_deadline_exceeded_total{service=\"/echo\"} 1",
            "wasmsocket_callback_duration_seconds_bucket{service=\"/echo\",le=\"0.000025\"} 1",
            "wasmsocket_callback_duration_seconds_bucket{service=\"/echo\",le=\"1\"} 1",
            "wasmsocket_callback_duration_seconds_bucket{service=\"/echo\",le=\"+Inf\"} 2",
            "wasmsocket_callback_duration_seconds_count{service=\"/echo\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }

    #[test]
    fn relay_metrics_only_with_redis() {
        let metrics = Metrics::default();
        metrics.relay.dropped(3);
        assert!(!metrics.render().contains("wasmsocket_topics_redis"));
        metrics.enable_relay();
        metrics.relay.set_up(true);
        metrics.relay.published(2);
        let text = metrics.render();
        for line in [
            "wasmsocket_topics_redis_up 1",
            "wasmsocket_topics_redis_messages_total{direction=\"out\"} 2",
            "wasmsocket_topics_redis_messages_total{direction=\"in\"} 0",
            "wasmsocket_topics_redis_dropped_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
