//! A test component that echoes text, misbehaves when told to, and exercises the rest
//! of the contract (upgrade rejection, headers, subprotocols, close, attributes,
//! callbacks).
//!
//! Upgrade queries: `upgrade=reject|panic|caller|bad-header|bad-protocol|inject` (`caller`
//! calls a caller function, which only callbacks may), `until=<unix ms>`.
//! Text commands: `panic`, `loop` (never returns), `alloc` (allocates without end),
//! `close CODE REASON`, `fail-unsupported`, `fail-close CODE`, `ping`,
//! `attr KEY VALUE` / `attr KEY` (set / read an attribute), `info` (id, secure,
//! subprotocol), `reply TEXT` / `reply-close CODE REASON` (answer by return value),
//! `watch` (receive what other connections' `on_close` / `on_error` report), `live`
//! (how many sessions this instance holds), `stash` (leaves 16 KiB of a marker byte in
//! linear memory), `scan` (how many bytes of linear memory hold the marker). Anything
//! else is echoed.

use wasmsocket_guest::prelude::*;

/// The topic `on_close` and `on_error` report to.
const EVENTS: &str = "faulty/events";

#[derive(Default)]
struct Faulty {
    events: Vec<String>,
    _live: Live,
}

/// Sessions alive in this instance: more than one only in shared mode.
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What `stash` fills linear memory with.
const MARKER: u8 = 0xa5;

/// How many bytes of this instance's linear memory hold [`MARKER`]: a memory that a
/// `stash` in another connection's instance left behind would show it.
fn scan() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        let size = core::arch::wasm32::memory_size(0) * 65536;
        // Byte 0 is skipped: a null pointer may not be read through.
        (1..size)
            .filter(|&address| {
                // SAFETY: every address below the memory's size is readable.
                #[allow(unsafe_code, reason = "reads the whole linear memory")]
                let byte = unsafe { std::ptr::read_volatile(address as *const u8) };
                byte == MARKER
            })
            .count()
    }
    #[cfg(not(target_arch = "wasm32"))]
    0
}

/// Counts a session in [`LIVE`] from creation until the host drops it.
struct Live;

impl Default for Live {
    fn default() -> Self {
        LIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[wasmsocket_guest::service]
impl Service for Faulty {
    fn upgrade(request: &UpgradeRequest) -> Result<Accept<Self>, UpgradeError> {
        // `until=<unix ms>`: unavailable (503) until then, to exercise client retries.
        if let Some(until) = request
            .query_param("until")
            .and_then(|v| v.parse::<u128>().ok())
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            if now < until {
                return Err(UpgradeError::new(503, "not yet"));
            }
        }
        match request.query_param("upgrade") {
            Some("reject") => return Err(UpgradeError::forbidden("not you")),
            Some("panic") => panic!("upgrade hook told to panic"),
            Some("caller") => {
                // No connection to act on yet: the host traps this call.
                wasmsocket_guest::wit::wasmsocket::service::caller::is_open();
            }
            Some("bad-header") => {
                return Ok(Accept::new(Faulty::default()).header("connection", "close"));
            }
            Some("inject") => {
                return Ok(
                    Accept::new(Faulty::default()).header("x-evil", "a\r\nset-cookie: pwned=1")
                );
            }
            Some("bad-protocol") => {
                return Ok(Accept::new(Faulty::default()).subprotocol("never-offered"));
            }
            _ => {}
        }
        let mut accept = Accept::new(Faulty::default()).header("x-faulty", "yes");
        if let Some(principal) = &request.principal {
            accept = accept
                .header("x-principal", principal.subject.clone())
                .header("x-scopes", principal.scopes.join(" "));
        }
        if let Some(protocol) = request
            .subprotocols
            .iter()
            .find(|p| p.as_str() == "faulty.v1")
        {
            accept = accept.subprotocol(protocol.clone());
        }
        Ok(accept)
    }

    fn on_open(&mut self, _caller: &Caller) -> Result {
        self.events.push("open".into());
        Ok(())
    }

    fn on_text_message(&mut self, caller: &Caller, text: String) -> Result<Reply> {
        let mut words = text.splitn(3, ' ');
        match (words.next().unwrap_or(""), words.next(), words.next()) {
            ("panic", _, _) => panic!("told to panic"),
            ("loop", _, _) => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ("alloc", _, _) => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            ("close", Some(code), reason) => {
                let code = code
                    .parse()
                    .map_err(|_| Error::UnsupportedData("bad code".into()))?;
                caller.close_with_timeout(code, reason.unwrap_or(""), 2_000)?;
            }
            ("fail-unsupported", _, _) => return Err(Error::UnsupportedData("not for me".into())),
            ("fail-close", Some(code), _) => {
                let code = code
                    .parse()
                    .map_err(|_| Error::UnsupportedData("bad code".into()))?;
                return Err(Error::Close {
                    code,
                    reason: "as asked".into(),
                });
            }
            ("ping", _, _) => caller.ping(b"hello")?,
            ("attr", Some(key), Some(value)) => caller.set_attribute(key, value),
            ("attr", Some(key), None) => {
                caller.write_text(&caller.get_attribute(key).unwrap_or_else(|| "<none>".into()))?
            }
            ("events", _, _) => caller.write_text(&self.events.join(","))?,
            ("info", _, _) => caller.write_text(&format!(
                "id={} secure={} subprotocol={} open={}",
                caller.id(),
                caller.is_secure(),
                caller.negotiated_subprotocol().unwrap_or_default(),
                caller.is_open()
            ))?,
            // Replies by return value (Ballerina's returned value).
            ("reply", Some(first), rest) => {
                return Ok(Reply::Text(format!(
                    "{first}{}",
                    rest.map(|r| format!(" {r}")).unwrap_or_default()
                )));
            }
            // A write through the caller, then a reply: they leave in that order.
            ("write-then-reply", Some(first), Some(second)) => {
                caller.write_text(first)?;
                return Ok(Reply::Text(second.to_owned()));
            }
            ("reply-close", Some(code), reason) => {
                let code = code
                    .parse()
                    .map_err(|_| Error::UnsupportedData("bad code".into()))?;
                return Ok(Reply::Close {
                    code,
                    reason: reason.unwrap_or("").to_owned(),
                });
            }
            // Sandbox probes: what the service's grants allow.
            ("env", Some(key), _) => {
                caller.write_text(&std::env::var(key).unwrap_or_else(|_| "<unset>".into()))?
            }
            ("read", Some(path), _) => caller.write_text(
                &std::fs::read_to_string(path).unwrap_or_else(|e| format!("<denied: {e}>")),
            )?,
            ("write", Some(path), _) => caller.write_text(&match std::fs::write(path, "x") {
                Ok(()) => "written".to_owned(),
                Err(e) => format!("<denied: {e}>"),
            })?,
            // 16 bytes from `wasi:random/random`, in hex.
            ("random", _, _) => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|e| Error::Internal(e.to_string()))?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                caller.write_text(&hex)?
            }
            ("connect", Some(address), _) => {
                caller.write_text(&match std::net::TcpStream::connect(address) {
                    Ok(_) => "connected".to_owned(),
                    Err(e) => format!("<denied: {e}>"),
                })?
            }
            // Subscribe to what other connections' on_close / on_error report.
            ("watch", _, _) => {
                caller.subscribe(EVENTS)?;
                caller.write_text("watching")?;
            }
            ("stash", _, _) => {
                let stash = std::hint::black_box(vec![MARKER; 16 * 1024]);
                std::mem::forget(stash);
                caller.write_text("stashed")?;
            }
            ("scan", _, _) => caller.write_text(&scan().to_string())?,
            ("live", _, _) => {
                caller.write_text(&LIVE.load(std::sync::atomic::Ordering::Relaxed).to_string())?
            }
            _ => caller.write_text(&text)?,
        }
        Ok(Reply::None)
    }

    fn on_ping(&mut self, caller: &Caller, data: Vec<u8>) -> Result {
        self.events
            .push(format!("ping:{}", String::from_utf8_lossy(&data)));
        Ok(caller.pong(&data)?)
    }

    fn on_pong(&mut self, caller: &Caller, data: Vec<u8>) -> Result {
        self.events
            .push(format!("pong:{}", String::from_utf8_lossy(&data)));
        caller.write_text(&format!("got pong {}", String::from_utf8_lossy(&data)))?;
        Ok(())
    }

    fn on_close(&mut self, caller: &Caller, code: u16, reason: String) -> Result {
        caller.publish_text(EVENTS, &format!("on_close {code} {reason}"))?;
        Ok(())
    }

    fn on_error(&mut self, caller: &Caller, message: String) -> Result {
        caller.publish_text(EVENTS, &format!("on_error {message}"))?;
        Ok(())
    }
}
