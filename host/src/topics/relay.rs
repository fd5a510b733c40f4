//! The Redis backend of the topics: what this host publishes goes to Redis as well,
//! and what the other hosts publish comes back from Redis to this host's subscribers.
//!
//! Two connections per host. The *publisher* takes messages from one bounded queue,
//! in the order they were published, and sends them as pipelined `PUBLISH`es; the
//! *subscriber* holds a `SUBSCRIBE` for every topic with a subscriber on this host,
//! and hands what arrives to the local subscribers. Redis keeps the order of one
//! connection's messages, so each publisher's messages arrive everywhere in the order
//! it sent them.
//!
//! Every message carries the id of the host instance that published it; a host
//! ignores its own when Redis sends them back (its subscribers had them already).
//!
//! While Redis is unreachable the host keeps serving and delivering locally, and the
//! messages meant for other hosts are dropped and counted (at most once across hosts).
//! Both connections retry with exponential back-off; the subscriber subscribes again
//! to everything wanted when it reconnects.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use super::redis::{Connection, RedisError, RedisUrl, Reply, encode, unexpected};
use super::{Published, Topics};
use crate::metrics::RelayMetrics;

/// Messages that may wait for the publisher connection; more are dropped.
const QUEUE_CAPACITY: usize = 4096;
/// Most messages sent in one write (one pipelined batch).
const MAX_BATCH: usize = 256;
/// A batch stops growing at this many bytes.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long connecting (with `AUTH` and `PING`) and each exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the subscriber connection checks that the server is there; it is given
/// up when a `PING` has no answer by the next one.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// The first pause before connecting again; it doubles with each failure.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause before connecting again.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Most channels named in one `SUBSCRIBE` or `UNSUBSCRIBE`.
const CHANNELS_PER_COMMAND: usize = 512;

/// The first byte of every message this host publishes: the envelope's version.
const ENVELOPE_VERSION: u8 = 1;
const TEXT: u8 = b't';
const BINARY: u8 = b'b';
/// Version, kind and the publishing instance's id (8 bytes, big-endian).
const ENVELOPE_HEAD: usize = 10;

/// A message on its way to Redis.
struct Outbound {
    channel: Bytes,
    payload: Bytes,
}

/// The relay's state, shared by the topics (which feed it) and its two tasks.
pub(crate) struct Relay {
    /// This host instance, random per start.
    id: u64,
    url: RedisUrl,
    prefix: String,
    queue: mpsc::Sender<Outbound>,
    /// The queue's receiving end, until the publisher task takes it.
    pending: Mutex<Option<mpsc::Receiver<Outbound>>>,
    /// Topics whose local subscriptions changed since the subscriber task last looked.
    changed: Mutex<HashSet<String>>,
    wake: Notify,
    health: Mutex<Health>,
    /// Set when the queue was full; cleared once the publisher catches up.
    lagging: AtomicBool,
    metrics: Arc<RelayMetrics>,
}

/// Which connection.
#[derive(Debug, Clone, Copy)]
enum Role {
    Publisher,
    Subscriber,
}

/// Whether the two connections are up, and since when they are not.
struct Health {
    publisher: bool,
    subscriber: bool,
    /// Set while either connection is down (from the start until both are up).
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    /// The dropped-message count when it began.
    dropped_before: u64,
    /// Whether it was logged (the first failure is).
    logged: bool,
}

impl Relay {
    pub(crate) fn new(url: RedisUrl, prefix: String, metrics: Arc<RelayMetrics>) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        Self {
            id: instance_id(),
            url,
            prefix,
            queue,
            pending: Mutex::new(Some(pending)),
            changed: Mutex::default(),
            wake: Notify::new(),
            health: Mutex::new(Health {
                publisher: false,
                subscriber: false,
                outage: Some(Outage {
                    since: Instant::now(),
                    dropped_before: 0,
                    logged: false,
                }),
            }),
            lagging: AtomicBool::new(false),
            metrics,
        }
    }

    /// Queues `message` for the other hosts; drops it (counted) when the queue is full.
    pub(crate) fn publish(&self, topic: &str, message: &Published) {
        let outbound = Outbound {
            channel: self.channel(topic),
            payload: envelope(self.id, message),
        };
        match self.queue.try_send(outbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped(1);
                if self.is_up() && !self.lagging.swap(true, Ordering::Relaxed) {
                    warn!(
                        redis = %self.url.address(),
                        "topics: Redis does not keep up with what this host publishes; \
                         messages for the other hosts are dropped"
                    );
                }
            }
            // The relay has stopped with the server.
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.dropped(1),
        }
    }

    /// Notes that `topic` got its first local subscriber or lost its last one.
    pub(crate) fn changed(&self, topic: &str) {
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        self.wake.notify_one();
    }

    /// Runs the publisher and the subscriber connections, reconnecting as needed,
    /// until dropped. Runs once: a second call returns at once.
    pub(crate) async fn run(&self, topics: &Topics) {
        let Some(queue) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        info!(
            redis = %self.url.address(),
            instance = %format!("{:016x}", self.id),
            "topics: relaying through Redis"
        );
        tokio::join!(self.publish_loop(queue), self.subscribe_loop(topics));
    }

    fn channel(&self, topic: &str) -> Bytes {
        let mut channel = BytesMut::with_capacity(self.prefix.len() + topic.len());
        channel.put_slice(self.prefix.as_bytes());
        channel.put_slice(topic.as_bytes());
        channel.freeze()
    }

    fn is_up(&self) -> bool {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.outage.is_none()
    }

    fn up(&self, role: Role) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match role {
            Role::Publisher => health.publisher = true,
            Role::Subscriber => health.subscriber = true,
        }
        if !(health.publisher && health.subscriber) {
            return;
        }
        self.metrics.set_up(true);
        let Some(outage) = health.outage.take() else {
            return;
        };
        let redis = self.url.address();
        if outage.logged {
            let dropped = self.metrics.dropped_count() - outage.dropped_before;
            info!(
                %redis,
                down_for = ?outage.since.elapsed(),
                dropped,
                "topics: Redis is reachable again; subscriptions restored"
            );
        } else {
            info!(%redis, "topics: connected to Redis");
        }
    }

    /// Records a failed connection; the first failure of an outage is logged.
    fn down(&self, role: Role, error: &RedisError) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match role {
            Role::Publisher => health.publisher = false,
            Role::Subscriber => health.subscriber = false,
        }
        self.metrics.set_up(false);
        let dropped_before = self.metrics.dropped_count();
        let outage = health.outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            dropped_before,
            logged: false,
        });
        if outage.logged {
            debug!(?role, %error, "topics: Redis still unreachable");
        } else {
            outage.logged = true;
            warn!(
                redis = %self.url.address(),
                ?role,
                %error,
                "topics: Redis is unreachable; until it is back, messages reach this host's \
                 subscribers only (retrying)"
            );
        }
    }

    async fn publish_loop(&self, mut queue: mpsc::Receiver<Outbound>) {
        let mut backoff = Backoff::default();
        loop {
            match Connection::open(&self.url, IO_TIMEOUT).await {
                Ok(mut connection) => {
                    let since = Instant::now();
                    self.up(Role::Publisher);
                    let error = self.publish_on(&mut connection, &mut queue).await;
                    self.down(Role::Publisher, &error);
                    backoff.after_connection(since.elapsed());
                }
                Err(error) => self.down(Role::Publisher, &error),
            }
            // Until the next attempt, what is published is dropped, not kept: it
            // would arrive late, after what is published once Redis is back.
            let retry = tokio::time::sleep(backoff.next());
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    () = &mut retry => break,
                    Some(_) = queue.recv() => self.metrics.dropped(1),
                }
            }
        }
    }

    /// Publishes what is queued, in order, until the connection fails.
    async fn publish_on(
        &self,
        connection: &mut Connection,
        queue: &mut mpsc::Receiver<Outbound>,
    ) -> RedisError {
        let mut batch = BytesMut::new();
        loop {
            // `self` holds the sender: the queue never ends.
            let first = tokio::select! {
                Some(message) = queue.recv() => message,
                // Nothing is expected while idle: this is the server going away.
                reply = connection.read() => {
                    return match reply {
                        Ok(reply) => unexpected(&reply),
                        Err(error) => error,
                    };
                }
            };
            batch.clear();
            let mut count = 0;
            let mut next = Some(first);
            while let Some(message) = next {
                encode(
                    &mut batch,
                    &[b"PUBLISH", &message.channel, &message.payload],
                );
                count += 1;
                next = if count < MAX_BATCH && batch.len() < MAX_BATCH_BYTES {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            let exchange = async {
                connection.write(&batch).await?;
                for _ in 0..count {
                    match connection.read().await? {
                        Reply::Integer(_) => {}
                        Reply::Error(error) => return Err(RedisError::Server(error)),
                        other => return Err(unexpected(&other)),
                    }
                }
                Ok(())
            };
            let result = match tokio::time::timeout(IO_TIMEOUT, exchange).await {
                Ok(result) => result,
                Err(_) => Err(RedisError::Timeout(IO_TIMEOUT)),
            };
            if let Err(error) = result {
                // Some may have reached Redis, but which is unknown: at most once.
                self.metrics.dropped(count as u64);
                return error;
            }
            self.metrics.published(count as u64);
            if self.lagging.swap(false, Ordering::Relaxed) {
                info!("topics: publishing to Redis has caught up");
            }
        }
    }

    async fn subscribe_loop(&self, topics: &Topics) {
        let mut backoff = Backoff::default();
        loop {
            match Connection::open(&self.url, IO_TIMEOUT).await {
                Ok(mut connection) => {
                    let since = Instant::now();
                    let error = self.subscribed_on(&mut connection, topics).await;
                    self.down(Role::Subscriber, &error);
                    backoff.after_connection(since.elapsed());
                }
                Err(error) => self.down(Role::Subscriber, &error),
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    /// Subscribes to every topic wanted here, then follows the changes and hands
    /// what arrives to the local subscribers, until the connection fails.
    async fn subscribed_on(&self, connection: &mut Connection, topics: &Topics) -> RedisError {
        // Everything wanted now; later changes are noted in `changed`.
        self.take_changed();
        let mut subscribed = HashSet::new();
        let wanted = topics.subscribed_topics();
        if let Err(error) = self
            .update(connection, &mut subscribed, wanted, Vec::new())
            .await
        {
            return error;
        }
        self.up(Role::Subscriber);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = true;
        loop {
            // Each branch is cancel safe: `read` keeps a partly received reply, and a
            // wake-up not taken stays stored in the `Notify`.
            tokio::select! {
                reply = connection.read() => {
                    heard = true;
                    let pushed = reply.and_then(|reply| self.on_push(reply, topics));
                    if let Err(error) = pushed {
                        return error;
                    }
                }
                () = self.wake.notified() => {
                    let (mut add, mut remove) = (Vec::new(), Vec::new());
                    for topic in self.take_changed() {
                        match (topics.has_subscribers(&topic), subscribed.contains(&topic)) {
                            (true, false) => add.push(topic),
                            (false, true) => remove.push(topic),
                            _ => {}
                        }
                    }
                    if let Err(error) = self.update(connection, &mut subscribed, add, remove).await {
                        return error;
                    }
                }
                _ = ping.tick() => {
                    if !heard {
                        return RedisError::Timeout(PING_INTERVAL);
                    }
                    heard = false;
                    let mut command = BytesMut::new();
                    encode(&mut command, &[b"PING"]);
                    if let Err(error) = write_within(connection, &command).await {
                        return error;
                    }
                }
            }
        }
    }

    fn take_changed(&self) -> HashSet<String> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sends `SUBSCRIBE` for `add` and `UNSUBSCRIBE` for `remove` (confirmations
    /// arrive as pushes).
    async fn update(
        &self,
        connection: &mut Connection,
        subscribed: &mut HashSet<String>,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<(), RedisError> {
        let mut commands = BytesMut::new();
        for (command, topics) in [(&b"SUBSCRIBE"[..], &add), (b"UNSUBSCRIBE", &remove)] {
            // Never an empty UNSUBSCRIBE: that would end every subscription.
            for chunk in topics.chunks(CHANNELS_PER_COMMAND) {
                let channels: Vec<Bytes> = chunk.iter().map(|t| self.channel(t)).collect();
                let mut args: Vec<&[u8]> = Vec::with_capacity(channels.len() + 1);
                args.push(command);
                args.extend(channels.iter().map(|c| &c[..]));
                encode(&mut commands, &args);
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        debug!(
            subscribe = add.len(),
            unsubscribe = remove.len(),
            "topics: updating Redis subscriptions"
        );
        for topic in &remove {
            subscribed.remove(topic);
        }
        subscribed.extend(add);
        write_within(connection, &commands).await
    }

    /// Handles what the subscriber connection received.
    fn on_push(&self, reply: Reply, topics: &Topics) -> Result<(), RedisError> {
        let items = match reply {
            Reply::Array(Some(items)) => items,
            // The answer to PING while subscribed to nothing.
            Reply::Status(pong) if pong == "PONG" => return Ok(()),
            Reply::Error(error) => return Err(RedisError::Server(error)),
            other => return Err(unexpected(&other)),
        };
        match items.as_slice() {
            [
                Reply::Bulk(Some(kind)),
                Reply::Bulk(Some(channel)),
                Reply::Bulk(Some(payload)),
            ] if &kind[..] == b"message" => {
                self.deliver(channel, payload, topics);
                Ok(())
            }
            [Reply::Bulk(Some(kind)), _, Reply::Integer(_)]
                if &kind[..] == b"subscribe" || &kind[..] == b"unsubscribe" =>
            {
                Ok(())
            }
            [Reply::Bulk(Some(kind)), _] if &kind[..] == b"pong" => Ok(()),
            _ => Err(unexpected(&Reply::Array(Some(items)))),
        }
    }

    /// Hands a message from Redis to this host's subscribers, unless it is this
    /// host's own or not a wasmsocket message.
    fn deliver(&self, channel: &[u8], payload: &Bytes, topics: &Topics) {
        let topic = channel
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|topic| std::str::from_utf8(topic).ok());
        let (Some(topic), Some((id, message))) = (topic, open_envelope(payload)) else {
            debug!(
                channel = %String::from_utf8_lossy(channel),
                "topics: ignoring a Redis message that no wasmsocket host published"
            );
            return;
        };
        if id == self.id {
            // Published here: the local subscribers have it already.
            return;
        }
        self.metrics.received();
        topics.deliver(topic, None, &message);
    }
}

/// Writes within [`IO_TIMEOUT`].
async fn write_within(connection: &mut Connection, bytes: &[u8]) -> Result<(), RedisError> {
    tokio::time::timeout(IO_TIMEOUT, connection.write(bytes))
        .await
        .map_err(|_| RedisError::Timeout(IO_TIMEOUT))?
}

/// Pauses between connection attempts: doubling from [`MIN_BACKOFF`] to
/// [`MAX_BACKOFF`], and back to the start after a connection that lasted.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(MIN_BACKOFF)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        pause
    }

    /// A connection that stayed up a while starts the pauses over; one that fails
    /// right after connecting (a server refusing clients) keeps them growing.
    fn after_connection(&mut self, lasted: Duration) {
        if lasted >= MAX_BACKOFF {
            *self = Self::default();
        }
    }
}

/// A random id for this host instance.
fn instance_id() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    // RandomState is seeded from the operating system's random source.
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now))
}

/// `message` as published to Redis: version, kind, the instance id, the payload.
fn envelope(id: u64, message: &Published) -> Bytes {
    let (kind, payload) = match message {
        Published::Text(text) => (TEXT, text),
        Published::Binary(data) => (BINARY, data),
    };
    let mut out = BytesMut::with_capacity(ENVELOPE_HEAD + payload.len());
    out.put_u8(ENVELOPE_VERSION);
    out.put_u8(kind);
    out.put_u64(id);
    out.put_slice(payload);
    out.freeze()
}

/// The publishing instance and the message, if `payload` is an envelope (and a text
/// message is UTF-8).
fn open_envelope(payload: &Bytes) -> Option<(u64, Published)> {
    if payload.len() < ENVELOPE_HEAD || payload[0] != ENVELOPE_VERSION {
        return None;
    }
    let id = u64::from_be_bytes(payload[2..ENVELOPE_HEAD].try_into().ok()?);
    let body = payload.slice(ENVELOPE_HEAD..);
    let message = match payload[1] {
        TEXT => {
            std::str::from_utf8(&body).ok()?;
            Published::Text(body)
        }
        BINARY => Published::Binary(body),
        _ => return None,
    };
    Some((id, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TopicsBackend, TopicsConfig};
    use crate::topics::inbox;

    fn redis_topics() -> Topics {
        let config = TopicsConfig {
            backend: TopicsBackend::Redis,
            url: Some("redis://127.0.0.1:1".into()),
            channel_prefix: None,
        };
        Topics::new(&config, Arc::default()).unwrap()
    }

    fn text(s: &'static str) -> Published {
        Published::Text(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn first_and_last_local_subscribers_change_the_redis_subscriptions() {
        let topics = redis_topics();
        let relay = topics.relay.as_ref().unwrap();
        let (a, _a) = inbox();
        let (b, _b) = inbox();
        topics.subscribe("room", 1, a);
        topics.subscribe("room", 2, b);
        assert_eq!(relay.take_changed(), HashSet::from(["room".to_owned()]));
        assert_eq!(topics.subscribed_topics(), ["room"]);
        topics.unsubscribe("room", 1);
        assert!(relay.take_changed().is_empty());
        assert!(topics.has_subscribers("room"));
        topics.unsubscribe("room", 2);
        assert_eq!(relay.take_changed(), HashSet::from(["room".to_owned()]));
        assert!(!topics.has_subscribers("room"));
    }

    #[test]
    fn what_is_published_is_queued_for_redis_in_order() {
        let topics = redis_topics();
        let relay = topics.relay.as_ref().unwrap();
        // With no subscriber here too: there may be some on other hosts.
        assert_eq!(topics.publish("room", 1, &text("one")), 0);
        assert_eq!(topics.publish("room", 1, &text("two")), 0);
        let mut queue = relay.pending.lock().unwrap().take().unwrap();
        for want in ["one", "two"] {
            let outbound = queue.try_recv().unwrap();
            assert_eq!(&outbound.channel[..], b"wasmsocket:room");
            let (id, message) = open_envelope(&outbound.payload).unwrap();
            assert_eq!(id, relay.id);
            assert_eq!(payload(&message), want.as_bytes());
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let topics = redis_topics();
        let relay = topics.relay.as_ref().unwrap();
        for _ in 0..QUEUE_CAPACITY + 2 {
            topics.publish("room", 1, &text("x"));
        }
        assert_eq!(relay.metrics.dropped_count(), 2);
    }

    #[test]
    fn messages_from_other_hosts_reach_every_local_subscriber() {
        let topics = redis_topics();
        let relay = topics.relay.as_ref().unwrap();
        let (a, mut a_inbox) = inbox();
        let (b, mut b_inbox) = inbox();
        topics.subscribe("room", 1, a);
        topics.subscribe("room", 2, b);
        let message = envelope(relay.id ^ 1, &text("hi"));
        relay.deliver(b"wasmsocket:room", &message, &topics);
        for inbox in [&mut a_inbox, &mut b_inbox] {
            assert!(matches!(inbox.try_recv(), Ok(Published::Text(t)) if &t[..] == b"hi"));
        }
        // Not this host's own (delivered already), another prefix, or a foreign format.
        relay.deliver(b"wasmsocket:room", &envelope(relay.id, &text("x")), &topics);
        relay.deliver(b"other:room", &message, &topics);
        relay.deliver(b"wasmsocket:room", &Bytes::from_static(b"plain"), &topics);
        assert!(a_inbox.try_recv().is_err());
        assert_eq!(relay.metrics.received_count(), 1);
    }

    #[test]
    fn pushes_are_told_apart() {
        let topics = redis_topics();
        let relay = topics.relay.as_ref().unwrap();
        let bulk = |s: &[u8]| Reply::Bulk(Some(Bytes::copy_from_slice(s)));
        let ack = Reply::Array(Some(vec![
            bulk(b"subscribe"),
            bulk(b"c"),
            Reply::Integer(1),
        ]));
        assert!(relay.on_push(ack, &topics).is_ok());
        let pong = Reply::Array(Some(vec![bulk(b"pong"), bulk(b"")]));
        assert!(relay.on_push(pong, &topics).is_ok());
        // PING while subscribed to nothing: not a push.
        assert!(relay.on_push(Reply::Status("PONG".into()), &topics).is_ok());
        let refused = Reply::Error("NOPERM".into());
        assert!(matches!(
            relay.on_push(refused, &topics),
            Err(RedisError::Server(_))
        ));
        assert!(relay.on_push(Reply::Integer(1), &topics).is_err());
    }

    fn payload(message: &Published) -> &[u8] {
        match message {
            Published::Text(b) | Published::Binary(b) => b,
        }
    }

    #[test]
    fn envelopes_carry_kind_and_instance() {
        let text = Published::Text(Bytes::from_static("héllo".as_bytes()));
        let (id, opened) = open_envelope(&envelope(7, &text)).unwrap();
        assert_eq!(id, 7);
        assert!(matches!(opened, Published::Text(_)));
        assert_eq!(payload(&opened), "héllo".as_bytes());
        let binary = Published::Binary(Bytes::from_static(&[0xff, 0]));
        let (_, opened) = open_envelope(&envelope(u64::MAX, &binary)).unwrap();
        assert!(matches!(opened, Published::Binary(b) if b[..] == [0xff, 0]));
        // Not ours: too short, another version or kind, text that is not UTF-8.
        for foreign in [
            &b"hello"[..],
            b"\x02t12345678x",
            b"\x01x12345678x",
            b"\x01t12345678\xff",
        ] {
            assert!(open_envelope(&Bytes::copy_from_slice(foreign)).is_none());
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_restarts_after_a_lasting_connection() {
        let mut backoff = Backoff::default();
        let pauses: Vec<_> = (0..8).map(|_| backoff.next()).collect();
        assert_eq!(pauses[0], MIN_BACKOFF);
        assert_eq!(pauses[1], MIN_BACKOFF * 2);
        assert_eq!(pauses[7], MAX_BACKOFF);
        backoff.after_connection(Duration::from_millis(10));
        assert_eq!(backoff.next(), MAX_BACKOFF);
        backoff.after_connection(MAX_BACKOFF);
        assert_eq!(backoff.next(), MIN_BACKOFF);
    }

    #[test]
    fn instances_differ() {
        assert_ne!(instance_id(), instance_id());
    }
}
