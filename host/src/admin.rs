//! The operators' endpoint: `GET /metrics` (Prometheus text format) and
//! `GET /healthz`. Plain HTTP/1.1, one request per connection, no authentication —
//! bind it to loopback or an internal network.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpListener;
use tracing::debug;

use crate::config::RequestLimits;
use crate::http;
use crate::metrics::Metrics;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers admin requests until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let limits = RequestLimits::default();
            let read = http::read_request(&mut stream, &limits, &mut buf);
            let Ok(Ok(request)) = tokio::time::timeout(REQUEST_TIMEOUT, read).await else {
                debug!(%remote, "admin request unreadable or too slow");
                return;
            };
            let (status, body) = match (request.method.as_str(), request.path.as_str()) {
                ("GET", "/metrics") => (200, metrics.render()),
                ("GET", "/healthz") => (200, "ok\n".to_owned()),
                (_, "/metrics" | "/healthz") => (405, "method not allowed\n".to_owned()),
                _ => (404, "not found\n".to_owned()),
            };
            let _ = http::respond(&mut stream, status, &[], None, &body).await;
        });
    }
}
