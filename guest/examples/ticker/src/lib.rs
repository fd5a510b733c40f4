//! Ticker: pushes `tick N` every `?every=MS` milliseconds (default 1000, at least 10)
//! without being asked; `stop` and `start` pause and resume it. When the client sends
//! nothing for the service's `idle_timeout`, it says so and closes with 1000.
//!
//! Run with `./run.sh` (serves it at `ws://127.0.0.1:9090/ticker`).

use std::time::Duration;

use wasmsocket_guest::prelude::*;

const TICK: u32 = 1;

struct Ticker {
    every: Duration,
    ticks: u64,
}

#[wasmsocket_guest::service]
impl Service for Ticker {
    fn upgrade(request: &UpgradeRequest) -> Result<Accept<Self>, UpgradeError> {
        let every = match request.query_param("every") {
            None => 1000,
            Some(ms) => ms
                .parse::<u64>()
                .map_err(|_| UpgradeError::bad_request("every: milliseconds"))?,
        };
        Ok(Ticker {
            every: Duration::from_millis(every.max(10)),
            ticks: 0,
        }
        .into())
    }

    fn on_open(&mut self, caller: &Caller) -> Result {
        Ok(caller.set_timer(TICK, self.every, true)?)
    }

    fn on_timer(&mut self, caller: &Caller, _id: u32) -> Result {
        self.ticks += 1;
        Ok(caller.write_text(&format!("tick {}", self.ticks))?)
    }

    fn on_text_message(&mut self, caller: &Caller, text: String) -> Result<Reply> {
        let state = match text.as_str() {
            "stop" => {
                caller.cancel_timer(TICK);
                "stopped"
            }
            "start" => {
                caller.set_timer(TICK, self.every, true)?;
                "started"
            }
            _ => return Err(Error::UnsupportedData("say start or stop".into())),
        };
        Ok(Reply::Text(format!("{state} at tick {}", self.ticks)))
    }

    fn on_idle_timeout(&mut self, caller: &Caller) -> Result {
        caller.write_text("idle: closing")?;
        Ok(caller.close(1000, "idle timeout")?)
    }
}
