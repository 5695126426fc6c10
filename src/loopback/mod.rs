//! The loopback network: an in-process network for tests and demonstrations.
//!
//! It has a bridge-wide identity (like a gateway) and a password login flow (like a personal
//! account), and it is driven over a control socket that speaks JSON lines on a loopback
//! address:
//!
//! - requests: `{"op": "inject", "event": RemoteEvent}` (answered once the bridge stored the
//!   event), `{"op": "sent"}` (every operation the bridge asked of the network since start),
//!   `{"op": "pause"}` / `{"op": "resume"}` (hold every send until resumed),
//!   `{"op": "slow", "ms": n}` (every message send from now on takes `n` ms, a slow network;
//!   each announced as it begins: `{"sending": {"op": "message", ...}}`),
//!   `{"op": "fail_next", "error": "undeliverable" | "transient" | "down", "message": "...",
//!   "count": n}` (the next `n` message sends fail, default 1) and
//!   `{"op": "state", "user": "@u:hs", "state": "BAD_CREDENTIALS"}`;
//! - answers: `{"reply": {...}}`; and, to every connected client, each operation as it
//!   happens: `{"sent": {"op": "message", ...}}` (a remote sender told that an event did not
//!   reach Matrix: `{"sent": {"op": "undelivered", "event": ..., "reason": "..."}}`).
//!
//! User IDs `name@group` share the per-domain limits of their group (`Connector::rate_key`).
//!
//! Logins: flow `password`, any username, the password `loopback-password`. A stored login
//! whose data has `"chats": "direct"` carries direct chats only (`NetworkClient::serves`),
//! like a personal account that cannot join group chats.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::network::{
    BridgeState, Capabilities, ChatKind, Connector, EventSink, LoginData, LoginField, LoginFlow,
    LoginId, LoginProcess, LoginStep, MatrixSender, MessageContent, NetworkClient, NetworkError,
    NetworkId, NetworkInfo, OutgoingMessage, PortalRef, Presence, RemoteChatId, RemoteEvent,
    RemoteMessageId, RemoteUserId, ThirdPartyField,
};

/// The password the loopback login flow accepts.
pub const PASSWORD: &str = "loopback-password";

/// `networks.loopback` section: an in-process network driven over a local control socket.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoopbackConfig {
    /// Address of the control socket (JSON lines); loopback addresses only.
    pub control: SocketAddr,
}

impl crate::network::config::NetworkConfig for LoopbackConfig {
    const KEY: &'static str = "loopback";

    fn validate(
        &self,
        _: &crate::network::config::ConfigContext<'_>,
    ) -> Result<(), crate::network::config::ConfigError> {
        if !self.control.ip().is_loopback() {
            return Err(crate::network::config::invalid(
                "networks.loopback.control",
                "must be a loopback address such as 127.0.0.1:29340",
            ));
        }
        Ok(())
    }

    fn connector(
        &self,
        _: &crate::network::config::ConfigContext<'_>,
    ) -> Result<Arc<dyn Connector>, crate::network::config::ConfigError> {
        Ok(Arc::new(Loopback::new(self.control)))
    }
}

struct Shared {
    sink: OnceLock<EventSink>,
    paused: watch::Sender<bool>,
    feed: broadcast::Sender<String>,
    log: Mutex<Vec<Value>>,
    counter: AtomicU64,
    /// Failures to answer the next sends with, first first.
    fail_next: Mutex<std::collections::VecDeque<NetworkError>>,
    /// How long each message send takes (`slow`).
    slow: Mutex<std::time::Duration>,
    stop: watch::Sender<bool>,
}

/// The loopback connector.
pub struct Loopback {
    info: NetworkInfo,
    control: SocketAddr,
    shared: Arc<Shared>,
    gateway: Arc<LoopbackClient>,
}

impl Loopback {
    /// A connector whose control socket will listen on `control`.
    pub fn new(control: SocketAddr) -> Self {
        let shared = Arc::new(Shared {
            sink: OnceLock::new(),
            paused: watch::channel(false).0,
            feed: broadcast::channel(4096).0,
            log: Mutex::default(),
            counter: AtomicU64::new(0),
            fail_next: Mutex::default(),
            slow: Mutex::default(),
            stop: watch::channel(false).0,
        });
        let field = |name: &str| ThirdPartyField {
            name: name.into(),
            regexp: r"[^\s]+".into(),
            placeholder: "bob".into(),
        };
        Self {
            info: NetworkInfo {
                id: NetworkId::new("loopback"),
                display_name: "Loopback".into(),
                protocol: "loopback".into(),
                capabilities: Capabilities::ALL,
                user_fields: vec![field("user")],
                location_fields: vec![field("room")],
                user_id_example: "bob".into(),
            },
            control,
            gateway: Arc::new(LoopbackClient {
                shared: Arc::clone(&shared),
                login: None,
                direct_only: false,
            }),
            shared,
        }
    }
}

fn valid_id(raw: &str) -> Result<String, NetworkError> {
    let id = raw.trim();
    if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NetworkError::InvalidInput(
            "a loopback ID is 1 to 255 characters without spaces".into(),
        ));
    }
    Ok(id.to_lowercase())
}

#[async_trait]
impl Connector for Loopback {
    fn info(&self) -> &NetworkInfo {
        &self.info
    }

    async fn undelivered(&self, event: &crate::network::RemoteEvent, reason: &str) {
        let op = json!({"op": "undelivered", "event": event, "reason": reason});
        self.shared.log.lock().expect("log lock").push(op.clone());
        let _ = self.shared.feed.send(json!({"sent": op}).to_string());
    }

    fn rate_key(&self, user: &RemoteUserId) -> String {
        // Loopback IDs have no domains; `name@group` puts users in a group, for tests of
        // the per-domain limits. A plain ID is a group of its own.
        match user.as_str().rsplit_once('@') {
            Some((_, group)) => group.to_owned(),
            None => user.as_str().to_owned(),
        }
    }

    async fn start(&self, sink: EventSink) -> Result<(), NetworkError> {
        let listener = TcpListener::bind(self.control).await.map_err(|e| {
            NetworkError::Internal(format!("cannot listen on {}: {e}", self.control).into())
        })?;
        info!(control = %self.control, "loopback network control socket listening");
        let shared = Arc::clone(&self.shared);
        let mut stop = self.shared.stop.subscribe();
        let tasks = sink.tasks().clone();
        self.shared
            .sink
            .set(sink)
            .map_err(|_| NetworkError::Internal("the loopback network was started twice".into()))?;
        tasks.clone().spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            debug!(%peer, "loopback control client connected");
                            tasks.spawn_loop(serve(Arc::clone(&shared), stream));
                        }
                        Err(e) => warn!(error = %crate::error::chain(&e), "loopback accept failed"),
                    },
                }
            }
        });
        Ok(())
    }

    async fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    fn bridge_client(&self) -> Option<Arc<dyn NetworkClient>> {
        Some(self.gateway.clone())
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![LoginFlow {
            id: "password".into(),
            name: "Username and password".into(),
            description: "Log in with a loopback username and password.".into(),
        }]
    }

    async fn start_login(
        &self,
        _user_id: &str,
        flow_id: &str,
    ) -> Result<Box<dyn LoginProcess>, NetworkError> {
        if flow_id != "password" {
            return Err(NetworkError::InvalidInput(
                format!("unknown flow {flow_id}").into(),
            ));
        }
        Ok(Box::new(PasswordLogin {
            shared: Arc::clone(&self.shared),
        }))
    }

    async fn load_login(
        &self,
        _user_id: &str,
        login: &LoginData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        if login.data.get("password").and_then(Value::as_str) != Some(PASSWORD) {
            return Err(NetworkError::BadCredentials(
                "the stored password is wrong".into(),
            ));
        }
        Ok(Arc::new(LoopbackClient {
            shared: Arc::clone(&self.shared),
            login: Some(login.remote_user.to_string()),
            direct_only: login.data.get("chats").and_then(Value::as_str) == Some("direct"),
        }))
    }

    fn parse_user_id(&self, raw: &str) -> Result<RemoteUserId, NetworkError> {
        valid_id(raw).map(RemoteUserId::new)
    }

    fn parse_group_chat_id(&self, raw: &str) -> Result<Option<RemoteChatId>, NetworkError> {
        let id = valid_id(raw)?;
        if !id.starts_with('#') {
            return Err(NetworkError::InvalidInput(
                "loopback group chats start with #".into(),
            ));
        }
        Ok(Some(RemoteChatId::new(id)))
    }

    fn status(&self) -> Vec<(String, BridgeState)> {
        vec![(
            format!("control socket {}", self.control),
            BridgeState::Connected,
        )]
    }
}

struct PasswordLogin {
    shared: Arc<Shared>,
}

#[async_trait]
impl LoginProcess for PasswordLogin {
    fn first_step(&mut self) -> LoginStep {
        LoginStep::Input {
            instructions: "Log in to the loopback network.".into(),
            fields: vec![
                LoginField {
                    id: "username".into(),
                    name: "username".into(),
                    secret: false,
                },
                LoginField {
                    id: "password".into(),
                    name: "password".into(),
                    secret: true,
                },
            ],
        }
    }

    async fn submit(&mut self, input: BTreeMap<String, String>) -> Result<LoginStep, NetworkError> {
        let user = valid_id(input.get("username").map(String::as_str).unwrap_or(""))?;
        if input.get("password").map(String::as_str) != Some(PASSWORD) {
            return Err(NetworkError::BadCredentials(
                "wrong username or password".into(),
            ));
        }
        let client = Arc::new(LoopbackClient {
            shared: Arc::clone(&self.shared),
            login: Some(user.clone()),
            direct_only: false,
        });
        Ok(LoginStep::Complete {
            login: LoginData {
                id: LoginId::new(user.as_str()),
                remote_user: RemoteUserId::new(user.as_str()),
                remote_name: user.clone(),
                data: json!({"password": PASSWORD}),
            },
            client,
        })
    }
}

/// An identity on the loopback network: the bridge-wide one (`login` None) or a user's login.
struct LoopbackClient {
    shared: Arc<Shared>,
    login: Option<String>,
    /// Carries direct chats only.
    direct_only: bool,
}

impl LoopbackClient {
    /// Records an operation, honouring pause and injected failures.
    async fn record(&self, mut op: Value) -> Result<RemoteMessageId, NetworkError> {
        let mut paused = self.shared.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        // Injected failures are for messages: presence, typing and receipts that happen
        // meanwhile must not take them.
        if op["op"] == "message"
            && let Some(e) = self.shared.fail_next.lock().expect("fail lock").pop_front()
        {
            return Err(e);
        }
        let slow = *self.shared.slow.lock().expect("slow lock");
        if op["op"] == "message" && !slow.is_zero() {
            let _ = self.shared.feed.send(json!({"sending": op}).to_string());
            tokio::time::sleep(slow).await;
        }
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("lb-{nanos:x}-{n}");
        op["remote_id"] = json!(id);
        op["via"] = json!(self.login.as_deref().unwrap_or("bridge"));
        self.shared.log.lock().expect("log lock").push(op.clone());
        let _ = self.shared.feed.send(json!({"sent": op}).to_string());
        Ok(RemoteMessageId::new(id))
    }
}

#[async_trait]
impl NetworkClient for LoopbackClient {
    fn state(&self) -> BridgeState {
        BridgeState::Connected
    }

    fn serves(&self, kind: ChatKind) -> bool {
        !self.direct_only || kind == ChatKind::Direct
    }

    async fn send_message(
        &self,
        portal: &PortalRef,
        message: &OutgoingMessage,
    ) -> Result<RemoteMessageId, NetworkError> {
        self.record(json!({"op": "message", "portal": portal, "message": message}))
            .await
    }

    async fn send_edit(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        content: &MessageContent,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "edit", "portal": portal, "sender": sender, "target": target, "content": content}))
            .await
            .map(drop)
    }

    async fn send_redaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        self.record(
            json!({"op": "redaction", "portal": portal, "sender": sender, "target": target}),
        )
        .await
        .map(drop)
    }

    async fn send_reaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        key: &str,
        remove: bool,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "reaction", "portal": portal, "sender": sender, "target": target, "key": key, "remove": remove}))
            .await
            .map(drop)
    }

    async fn send_typing(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        typing: bool,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "typing", "portal": portal, "sender": sender, "typing": typing}))
            .await
            .map(drop)
    }

    async fn send_receipt(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        up_to: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "receipt", "portal": portal, "sender": sender, "up_to": up_to}))
            .await
            .map(drop)
    }

    async fn set_presence(
        &self,
        sender: &MatrixSender,
        presence: &Presence,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "presence", "sender": sender, "presence": presence}))
            .await
            .map(drop)
    }

    async fn logout(&self) -> Result<(), NetworkError> {
        self.record(json!({"op": "logout"})).await.map(drop)
    }
}

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

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
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
