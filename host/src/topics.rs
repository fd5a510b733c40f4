//! Publish/subscribe between connections: what a chat room needs. A guest subscribes
//! its connection to a topic; what another connection publishes there is written to
//! the subscribers' sockets by the host, without waking their guests.
//!
//! The subscribers of this host are always reached in-process. With the Redis backend
//! (`[topics] backend = "redis"`) every message also goes to Redis, and what other
//! hosts publish comes back from it ([`relay`]).

mod redis;
mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

pub(crate) use self::redis::RedisUrl;
use self::relay::Relay;
use crate::config::{TopicsBackend, TopicsConfig};
use crate::metrics::RelayMetrics;

/// Messages a connection may have waiting from its topics before it misses some.
pub(crate) const INBOX_CAPACITY: usize = 256;
/// Longest topic name, bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 256;
/// Most topics one connection may subscribe to.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 64;

/// A published message, cheap to clone to every subscriber.
#[derive(Debug, Clone)]
pub(crate) enum Published {
    Text(Bytes),
    Binary(Bytes),
}

/// Where a connection receives what its topics publish.
pub(crate) type Inbox = mpsc::Receiver<Published>;
/// The sending side of a connection's inbox.
pub(crate) type InboxSender = mpsc::Sender<Published>;

/// A connection's inbox.
pub(crate) fn inbox() -> (InboxSender, Inbox) {
    mpsc::channel(INBOX_CAPACITY)
}

/// Topic → subscribed connection → its inbox; and the Redis relay, if configured.
#[derive(Default)]
pub(crate) struct Topics {
    subscribers: Mutex<HashMap<String, HashMap<u64, InboxSender>>>,
    relay: Option<Relay>,
}

impl Topics {
    /// The topics `config` asks for. With Redis, nothing connects until
    /// [`Topics::run_relay`] runs.
    pub(crate) fn new(config: &TopicsConfig, metrics: Arc<RelayMetrics>) -> Result<Self, String> {
        let relay = match config.backend {
            TopicsBackend::Memory => None,
            TopicsBackend::Redis => {
                let url = config
                    .url
                    .as_deref()
                    .ok_or("topics.url: required with backend = \"redis\"")?;
                let url = RedisUrl::parse(url, "topics.url")?;
                Some(Relay::new(url, config.channel_prefix().to_owned(), metrics))
            }
        };
        Ok(Self {
            subscribers: Mutex::default(),
            relay,
        })
    }

    /// Whether messages also go through Redis.
    pub(crate) fn has_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// Keeps the Redis connections (reconnecting as needed) until dropped; returns at
    /// once without Redis.
    pub(crate) async fn run_relay(self: Arc<Self>) {
        if let Some(relay) = &self.relay {
            relay.run(&self).await;
        }
    }

    pub(crate) fn subscribe(&self, topic: &str, connection: u64, inbox: InboxSender) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let topic_subscribers = subscribers.entry(topic.to_owned()).or_default();
        let first = topic_subscribers.is_empty();
        topic_subscribers.insert(connection, inbox);
        if first && let Some(relay) = &self.relay {
            relay.changed(topic);
        }
    }

    pub(crate) fn unsubscribe(&self, topic: &str, connection: u64) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(topic_subscribers) = subscribers.get_mut(topic) {
            topic_subscribers.remove(&connection);
            if topic_subscribers.is_empty() {
                subscribers.remove(topic);
                if let Some(relay) = &self.relay {
                    relay.changed(topic);
                }
            }
        }
    }

    /// Queues `message` for every subscriber of `topic` on this host but `from`, and
    /// sends it to the other hosts when there is a relay; returns how many
    /// subscribers of this host it was queued for.
    pub(crate) fn publish(&self, topic: &str, from: u64, message: &Published) -> u32 {
        let queued = self.deliver(topic, Some(from), message);
        if let Some(relay) = &self.relay {
            relay.publish(topic, message);
        }
        queued
    }

    /// Queues `message` for every subscriber of `topic` on this host but `from`;
    /// returns how many.
    fn deliver(&self, topic: &str, from: Option<u64>, message: &Published) -> u32 {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(topic_subscribers) = subscribers.get_mut(topic) else {
            return 0;
        };
        let mut queued = 0;
        topic_subscribers.retain(|connection, inbox| {
            if Some(*connection) == from {
                return true;
            }
            match inbox.try_send(message.clone()) {
                Ok(()) => {
                    queued += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        topic,
                        connection, "subscriber is too slow; it misses a message"
                    );
                    true
                }
                // The connection is gone.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if topic_subscribers.is_empty() {
            subscribers.remove(topic);
            if let Some(relay) = &self.relay {
                relay.changed(topic);
            }
        }
        queued
    }

    /// Whether `topic` has a subscriber on this host.
    fn has_subscribers(&self, topic: &str) -> bool {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(topic)
    }

    /// Every topic with a subscriber on this host.
    fn subscribed_topics(&self) -> Vec<String> {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// How many topics have subscribers (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &'static str) -> Published {
        Published::Text(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn publish_reaches_every_subscriber_but_the_publisher() {
        let topics = Topics::default();
        let (a, mut a_inbox) = inbox();
        let (b, mut b_inbox) = inbox();
        topics.subscribe("room", 1, a);
        topics.subscribe("room", 2, b);
        assert_eq!(topics.publish("room", 1, &text("hi")), 1);
        assert!(a_inbox.try_recv().is_err());
        assert!(matches!(b_inbox.try_recv(), Ok(Published::Text(t)) if &t[..] == b"hi"));
        assert_eq!(topics.publish("elsewhere", 1, &text("x")), 0);
    }

    #[test]
    fn gone_and_unsubscribed_connections_are_dropped() {
        let topics = Topics::default();
        let (a, a_inbox) = inbox();
        let (b, _b_inbox) = inbox();
        topics.subscribe("room", 1, a);
        topics.subscribe("room", 2, b);
        drop(a_inbox);
        assert_eq!(topics.publish("room", 3, &text("x")), 1);
        topics.unsubscribe("room", 2);
        assert_eq!(topics.len(), 0);
    }

    #[test]
    fn a_full_inbox_misses_messages_without_blocking() {
        let topics = Topics::default();
        let (a, _a_inbox) = inbox();
        topics.subscribe("room", 1, a);
        for _ in 0..INBOX_CAPACITY {
            assert_eq!(topics.publish("room", 2, &text("x")), 1);
        }
        assert_eq!(topics.publish("room", 2, &text("x")), 0);
    }
}
