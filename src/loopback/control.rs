//! The control socket: JSON-lines requests that drive the network (inject, pause, slow,
//! fail, state) and the feed of every operation as it happens.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::Shared;
use crate::network::{BridgeState, NetworkError, RemoteEvent};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Inject {
        event: Box<RemoteEvent>,
    },
    Sent,
    Pause,
    Resume,
    Slow {
        ms: u64,
    },
    FailNext {
        error: String,
        #[serde(default)]
        message: String,
        #[serde(default = "one")]
        count: u32,
    },
    State {
        #[serde(default)]
        user: Option<String>,
        state: BridgeState,
        #[serde(default)]
        message: Option<String>,
    },
}

fn one() -> u32 {
    1
}

pub(super) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut feed = shared.feed.subscribe();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(l)) => l,
                    _ => break,
                };
                let reply = handle_request(&shared, &line).await;
                let out = json!({"reply": reply}).to_string() + "\n";
                if write.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
            sent = feed.recv() => {
                let Ok(sent) = sent else { continue };
                if write.write_all((sent + "\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn handle_request(shared: &Shared, line: &str) -> Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    match req {
        Request::Inject { event } => {
            let Some(sink) = shared.sink.get() else {
                return json!({"ok": false, "error": "not started"});
            };
            match sink.push(*event).await {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            }
        }
        Request::Sent => json!({"ok": true, "sent": *shared.log.lock().expect("log lock")}),
        Request::Pause => {
            shared.paused.send_replace(true);
            json!({"ok": true})
        }
        Request::Resume => {
            shared.paused.send_replace(false);
            json!({"ok": true})
        }
        Request::Slow { ms } => {
            *shared.slow.lock().expect("slow lock") = std::time::Duration::from_millis(ms);
            json!({"ok": true})
        }
        Request::FailNext {
            error,
            message,
            count,
        } => {
            let make = || match error.as_str() {
                "undeliverable" => Some(NetworkError::Undeliverable(message.clone().into())),
                "transient" => Some(NetworkError::Transient(message.clone().into())),
                "down" => Some(NetworkError::Down(message.clone().into())),
                "unsupported" => Some(NetworkError::Unsupported("this operation")),
                _ => None,
            };
            let mut queue = shared.fail_next.lock().expect("fail lock");
            for _ in 0..count {
                let Some(e) = make() else {
                    return json!({"ok": false, "error": format!("unknown error kind {error}")});
                };
                queue.push_back(e);
            }
            json!({"ok": true})
        }
        Request::State {
            user,
            state,
            message,
        } => {
            let Some(sink) = shared.sink.get() else {
                return json!({"ok": false, "error": "not started"});
            };
            sink.report_state(user.as_deref(), state, message).await;
            json!({"ok": true})
        }
    }
}
