//! Chat: connections join a room (`?room=NAME`, default `lobby`, and `?name=NICK`);
//! what one sends, every other connection in the room receives, as
//! `{"from": ..., "text": ...}`. Joining and leaving are announced the same way.
//!
//! Run with `./run.sh` (serves it at `ws://127.0.0.1:9090/chat`).

use serde::Serialize;
use wasmsocket_guest::prelude::*;

struct Chat {
    room: String,
    name: String,
}

#[derive(Serialize)]
struct Line<'a> {
    from: &'a str,
    text: &'a str,
}

fn valid(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 32
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[wasmsocket_guest::service]
impl Service for Chat {
    fn upgrade(request: &UpgradeRequest) -> Result<Accept<Self>, UpgradeError> {
        let room = request.query_param("room").unwrap_or("lobby");
        let name = request.query_param("name").unwrap_or("anonymous");
        if !valid(room) || !valid(name) {
            return Err(UpgradeError::bad_request(
                "room and name: 1-32 letters, digits, - or _",
            ));
        }
        Ok(Chat {
            room: format!("chat/{room}"),
            name: name.to_owned(),
        }
        .into())
    }

    fn on_open(&mut self, caller: &Caller) -> Result {
        caller.subscribe(&self.room)?;
        caller.publish_message(
            &self.room,
            &Line {
                from: "room",
                text: &format!("{} joined", self.name),
            },
        )?;
        Ok(())
    }

    fn on_text_message(&mut self, caller: &Caller, text: String) -> Result<Reply> {
        caller.publish_message(
            &self.room,
            &Line {
                from: &self.name,
                text: &text,
            },
        )?;
        Ok(Reply::None)
    }

    fn on_close(&mut self, caller: &Caller, _code: u16, _reason: String) -> Result {
        caller.publish_message(
            &self.room,
            &Line {
                from: "room",
                text: &format!("{} left", self.name),
            },
        )?;
        Ok(())
    }
}
