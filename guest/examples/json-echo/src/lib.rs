//! JSON echo: Ballerina's `onMessage` with data binding. Each message is bound to a
//! command (dispatched on its `"type"` field, Ballerina's `dispatcherKey`); an order is
//! answered with a receipt, a ping with a pong. A message that does not bind closes the
//! connection with 1003.
//!
//! Run with `./run.sh` (serves it at `ws://127.0.0.1:9090/json`).

use serde::{Deserialize, Serialize};
use wasmsocket_guest::prelude::*;

/// What a client may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Order {
        id: u32,
        item: String,
        quantity: u32,
    },
    Ping,
}

/// What the service answers.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Answer {
    Receipt {
        id: u32,
        item: String,
        quantity: u32,
        total_orders: u32,
    },
    Pong {
        total_orders: u32,
    },
}

#[derive(Default)]
struct JsonEcho {
    orders: u32,
}

#[wasmsocket_guest::service]
impl Service for JsonEcho {
    fn upgrade(_request: &UpgradeRequest) -> Result<Accept<Self>, UpgradeError> {
        Ok(JsonEcho::default().into())
    }

    fn on_message(&mut self, _caller: &Caller, data: Data) -> Result<Reply> {
        let answer = match data.bind::<Command>()? {
            Command::Order { id, item, quantity } => {
                self.orders += 1;
                Answer::Receipt {
                    id,
                    item,
                    quantity,
                    total_orders: self.orders,
                }
            }
            Command::Ping => Answer::Pong {
                total_orders: self.orders,
            },
        };
        // Returned, the answer is sent back as JSON: Ballerina's returned record.
        Reply::message(&answer)
    }
}
