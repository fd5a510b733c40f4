//! A future polled only after it asked to be.
//!
//! `tokio::select!` polls every branch each time its task wakes, and a connection's
//! task wakes for every message. Some branches wait on something shared by every
//! connection (the server's shutdown signal, a shared instance's trap flag), and
//! polling those takes a lock that all connections contend for: with two worker
//! threads that was a measurable share of a message's cost. [`Quiet`] polls its future
//! once, then again only after the future's own waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps `future` so that polling it when it has not been woken costs two atomics.
/// (`F` is `Unpin`: a boxed future, sized for what it is.)
pub(crate) struct Quiet<F> {
    future: F,
    signal: Arc<Signal>,
    waker: Waker,
}

/// What the inner future's waker reaches: a flag, and the task to wake.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Quiet<F> {
    pub(crate) fn new(future: F) -> Self {
        let signal = Arc::new(Signal {
            // The first poll always reaches the future, so it can register its waker.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            future,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future + Unpin> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake in between is not lost.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.future).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A future that counts its polls and is ready once notified.
    struct Counted {
        polls: Arc<AtomicUsize>,
        notified: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    }

    impl Future for Counted {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.notified.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn polls_the_inner_future_only_when_it_was_woken() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let polls = Arc::new(AtomicUsize::new(0));
        let mut quiet = Quiet::new(Counted {
            polls: polls.clone(),
            notified: Box::pin(notify.clone().notified_owned()),
        });
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            assert!(Pin::new(&mut quiet).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, to register");

        // A wake reaches the task that polled last, and its next poll reaches the
        // future.
        let waiter = tokio::spawn(quiet);
        tokio::time::sleep(Duration::from_millis(20)).await;
        notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
