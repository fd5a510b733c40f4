//! Echo: every text and binary message goes back to its sender.
//!
//! Run with `./run.sh` from the repository root (serves it at
//! `ws://127.0.0.1:9090/echo`), or build it alone with
//! `cargo build -p echo --target wasm32-wasip2 --profile guest`.

use wasmsocket_guest::prelude::*;

struct Echo;

#[wasmsocket_guest::service]
impl Service for Echo {
    fn upgrade(_request: &UpgradeRequest) -> Result<Accept<Self>, UpgradeError> {
        Ok(Echo.into())
    }

    fn on_text_message(&mut self, _caller: &Caller, text: String) -> Result<Reply> {
        Ok(Reply::Text(text))
    }

    fn on_binary_message(&mut self, _caller: &Caller, data: Vec<u8>) -> Result<Reply> {
        Ok(Reply::Binary(data))
    }
}
