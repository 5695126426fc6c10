//! SIP user agents for the tests, played by SIPp (Debian package `sip-tester`) with the
//! scenarios in `tests/sipp/`, against the Kamailio that `scripts/kamailio.sh` starts
//! (`scripts/test.sh` does) on [`PROXY`].
//!
//! Kamailio serves the SIP domain [`DOMAIN`] (users bob, carol, dave, erin and frank, password
//! `<name>pass`, see [`password`]) and sends every request for [`GATEWAY_DOMAIN`] to
//! 127.0.0.1:[`GATEWAY_PORT`], where the bridge listens (or a [`MessageSink`] standing in for
//! it). Out-of-dialog requests from [`DOMAIN`] must authenticate (the helpers answer the
//! challenge); requests from [`GATEWAY_DOMAIN`] are accepted only from the gateway port.
//!
//! Two kinds of helpers:
//! - one-shot requests through the proxy that return the final status code: [`register`],
//!   [`unregister_all`], [`send_message`], [`send_message_as`];
//! - user agents that keep running until dropped, and whose traffic the test waits for:
//!   [`MessageSink`] (answers MESSAGEs), [`Notifier`] (answers presence SUBSCRIBEs with a PIDF
//!   NOTIFY) and [`Watcher`] (SUBSCRIBEs to someone's presence and collects the NOTIFYs).
//!
//! What a SIPp process received is read back from its message trace (`-trace_msg`), which
//! holds every received message verbatim; each process works in a temporary directory of its
//! own, kept (and named on stderr) when a test panics. Registrations outlive the process that
//! made them: a test that registers a user removes the bindings again with
//! [`unregister_all`], at its start and at its end, so that a stale binding of an earlier test
//! does not fork messages to a port another test now uses. [`restart_kamailio`] restarts the
//! server on the same ports and so forgets every registration.
//!
//! Every wait has a timeout and panics with what it waited for and the tail of SIPp's trace.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The proxy and registrar, as `scripts/test.sh` starts it.
pub const PROXY: &str = "127.0.0.1:15060";
/// The port of [`PROXY`].
pub const PROXY_PORT: u16 = 15060;
/// Where the proxy sends requests for [`GATEWAY_DOMAIN`]: the bridge's SIP port.
pub const GATEWAY_PORT: u16 = 15070;
/// The SIP domain of the organisation's SIP users.
pub const DOMAIN: &str = "corp.localhost";
/// The SIP domain under which Matrix users appear (`sip:alice@matrix.corp.localhost`).
pub const GATEWAY_DOMAIN: &str = "matrix.corp.localhost";
/// The SIP users Kamailio knows.
pub const USERS: [&str; 5] = ["bob", "carol", "dave", "erin", "frank"];
/// The content type of RFC 3994 typing notifications.
pub const IS_COMPOSING: &str = "application/im-iscomposing+xml";

/// How long a one-shot request may take. Kamailio gives up on a silent contact after 5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a long-running user agent may live before `timeout` stops it.
const AGENT_LIFETIME: Duration = Duration::from_secs(600);
/// How often the waits look at the trace.
const POLL: Duration = Duration::from_millis(20);

const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");

/// The password of a SIP user of [`DOMAIN`].
pub fn password(user: &str) -> String {
    format!("{user}pass")
}

/// `sip:user@corp.localhost`.
pub fn uri(user: &str) -> String {
    format!("sip:{user}@{DOMAIN}")
}

/// `sip:localpart@matrix.corp.localhost`: a Matrix user as SIP users address them.
pub fn gateway_uri(localpart: &str) -> String {
    format!("sip:{localpart}@{GATEWAY_DOMAIN}")
}

/// The Contact of a user agent listening on `port`: `<sip:user@127.0.0.1:port>`.
pub fn contact(user: &str, port: u16) -> String {
    format!("<sip:{user}@127.0.0.1:{port}>")
}

/// An RFC 3994 typing notification body with `state` "active" or "idle".
pub fn is_composing(state: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <isComposing xmlns=\"urn:ietf:params:xml:ns:im-iscomposing\">\n  \
         <state>{state}</state>\n  <contenttype>text/plain</contenttype>\n  \
         <refresh>60</refresh>\n</isComposing>\n"
    )
}

/// Panics unless Kamailio accepts TCP connections on [`PROXY`].
pub fn require_kamailio() {
    let addr: SocketAddr = PROXY.parse().expect("proxy address");
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("Kamailio is not running on {PROXY}; run the tests through scripts/test.sh");
    }
}

/// One binding of a user at the registrar, as Kamailio's location table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The contact address.
    pub address: String,
    /// Seconds until it runs out, as of the lookup.
    pub expires: u64,
    /// The Call-ID of the REGISTER that made or last refreshed it.
    pub call_id: String,
    /// The CSeq of that REGISTER: a refresh in the same registration raises it.
    pub cseq: u64,
}

/// The bindings of `user` (of [`DOMAIN`]) at the registrar now, read from Kamailio's location
/// table over its control socket (`kamcmd ul.lookup`); empty when it has none.
pub fn bindings(user: &str) -> Vec<Binding> {
    let socket = format!("unix:{}/kamailio/run/kamailio_ctl", super::stack_dir());
    let out = Command::new("kamcmd")
        .args(["-s", &socket, "ul.lookup", "location", user])
        .output()
        .expect("run kamcmd (Debian package kamailio)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("AOR not found") {
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "kamcmd ul.lookup location {user}: {text}"
    );
    let mut found = Vec::new();
    let mut current: Option<Binding> = None;
    for line in text.lines().map(str::trim) {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match key {
            "Address" => {
                found.extend(current.take());
                current = Some(Binding {
                    address: value.to_owned(),
                    expires: 0,
                    call_id: String::new(),
                    cseq: 0,
                });
            }
            "Expires" => {
                if let Some(b) = current.as_mut() {
                    b.expires = value.parse().unwrap_or(0);
                }
            }
            "Call-ID" => {
                if let Some(b) = current.as_mut() {
                    b.call_id = value.to_owned();
                }
            }
            "CSeq" => {
                if let Some(b) = current.as_mut() {
                    b.cseq = value.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    found.extend(current);
    found
}

/// Restarts Kamailio on the same ports with `scripts/kamailio.sh restart`: every registration
/// is lost. Returns once it listens again.
pub fn restart_kamailio() {
    let status = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kamailio.sh"))
        .arg("restart")
        .status()
        .expect("run scripts/kamailio.sh restart");
    assert!(
        status.success(),
        "scripts/kamailio.sh restart failed ({status})"
    );
    require_kamailio();
}

/// Panics unless the `sipp` binary is on the PATH.
fn require_sipp() {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("sipp").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "the sipp binary is not on the PATH: install the Debian package sip-tester, or run the \
         tests through scripts/test.sh, which installs it"
    );
}

// ---------------------------------------------------------------------------------------------
// SIP messages as read from a trace
// ---------------------------------------------------------------------------------------------

/// One SIP message: start line, headers in order, body.
#[derive(Clone, Debug)]
pub struct SipMessage {
    /// `MESSAGE sip:bob@127.0.0.1:15081 SIP/2.0` or `SIP/2.0 200 OK`.
    pub start_line: String,
    /// Header names as sent (compact forms included) and values, folded lines joined.
    pub headers: Vec<(String, String)>,
    /// The body (as many bytes as Content-Length says), decoded as UTF-8.
    pub body: String,
}

impl SipMessage {
    /// Parses one message; `None` when there is no start line.
    pub fn parse(raw: &[u8]) -> Option<SipMessage> {
        let (head, body) = match find(raw, b"\r\n\r\n") {
            Some(i) => (&raw[..i], &raw[i + 4..]),
            None => match find(raw, b"\n\n") {
                Some(i) => (&raw[..i], &raw[i + 2..]),
                None => (raw, &raw[raw.len()..]),
            },
        };
        let head = String::from_utf8_lossy(head);
        let mut lines = head.lines();
        let start_line = lines.next()?.trim().to_owned();
        if start_line.is_empty() {
            return None;
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let mut message = SipMessage {
            start_line,
            headers,
            body: String::new(),
        };
        let len = message
            .header("Content-Length")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(body.len())
            .min(body.len());
        message.body = String::from_utf8_lossy(&body[..len]).into_owned();
        Some(message)
    }

    /// The first header called `name` (case-insensitive; compact forms match too).
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = long_name(name);
        self.headers
            .iter()
            .find(|(n, _)| long_name(n) == want)
            .map(|(_, v)| v.as_str())
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start_line.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.start_line.starts_with("SIP/") {
            return None;
        }
        self.start_line.split(' ').next()
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        self.method()?;
        self.start_line.split(' ').nth(1)
    }

    /// The method named in CSeq (for a response: the method it answers).
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }

    /// The URI in header `name` (From, To, Contact...), without display name or parameters;
    /// "" without that header.
    pub fn header_uri(&self, name: &str) -> String {
        self.header(name).map(addr_uri).unwrap_or_default()
    }
}

/// The long lowercase name of a header given in any case or compact form (RFC 3261 7.3.3,
/// RFC 3265, RFC 3515).
fn long_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let long = match lower.as_str() {
        "i" => "call-id",
        "m" => "contact",
        "e" => "content-encoding",
        "l" => "content-length",
        "c" => "content-type",
        "f" => "from",
        "s" => "subject",
        "k" => "supported",
        "t" => "to",
        "v" => "via",
        "o" => "event",
        "u" => "allow-events",
        "r" => "refer-to",
        "b" => "referred-by",
        _ => return lower,
    };
    long.to_owned()
}

/// The URI of a name-addr or addr-spec header value (`"Bob" <sip:bob@x>;tag=1` → `sip:bob@x`).
fn addr_uri(value: &str) -> String {
    if let (Some(open), Some(close)) = (value.find('<'), value.find('>'))
        && open < close
    {
        return value[open + 1..close].trim().to_owned();
    }
    value.split(';').next().unwrap_or("").trim().to_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The messages SIPp received, in order, from its `-trace_msg` file. SIPp writes each as
/// `<TRANSPORT> message received [N] bytes :` followed by an empty line and the N bytes; an
/// entry still being written is left out.
fn received_messages(trace: &[u8]) -> Vec<SipMessage> {
    const MARK: &[u8] = b"message received [";
    let mut out = Vec::new();
    let mut rest = trace;
    while let Some(at) = find(rest, MARK) {
        rest = &rest[at + MARK.len()..];
        let Some(close) = find(rest, b"]") else { break };
        let Ok(len) = std::str::from_utf8(&rest[..close])
            .unwrap_or("")
            .parse::<usize>()
        else {
            continue;
        };
        let Some(start) = find(rest, b"\n\n") else {
            break;
        };
        let start = start + 2;
        if rest.len() < start + len {
            break;
        }
        if let Some(message) = SipMessage::parse(&rest[start..start + len]) {
            out.push(message);
        }
        rest = &rest[start + len..];
    }
    out
}

/// The last final status code among the responses in `messages`.
fn final_status(messages: &[SipMessage]) -> Option<u16> {
    messages
        .iter()
        .filter_map(SipMessage::status)
        .rfind(|s| *s >= 200)
}

// ---------------------------------------------------------------------------------------------
// Running SIPp
// ---------------------------------------------------------------------------------------------

/// A free UDP port on 127.0.0.1 for a SIPp client (SIPp's own default is 5060 and up, bound on
/// every address).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("find a free UDP port")
}

/// True if a UDP socket is bound to 127.0.0.1:`port` or to every address on `port`.
fn udp_bound(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let ours = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1))
        .any(|local| ours.iter().any(|o| o == local))
}

/// One SIPp process, wrapped in `timeout` so that it cannot outlive a test run for long.
struct Sipp {
    /// What it does, for messages: "SIPp MESSAGE sink on 127.0.0.1:15081".
    what: String,
    dir: Option<TempDir>,
    child: Mutex<Child>,
}

impl Sipp {
    /// Starts `scenario` (a file in `tests/sipp/`) with `args` after the common ones, in a
    /// fresh temporary directory; `body` becomes the file `body` there. `remote` is the
    /// address a client scenario talks to; `port` the local UDP port.
    fn spawn(
        what: String,
        scenario: &str,
        port: u16,
        remote: Option<&str>,
        args: &[String],
        body: Option<&[u8]>,
        lifetime: Duration,
    ) -> Sipp {
        require_sipp();
        let dir = tempfile::Builder::new()
            .prefix("isthmus-sipp-")
            .tempdir()
            .expect("create a temporary directory for SIPp");
        if let Some(body) = body {
            std::fs::write(dir.path().join("body"), body).expect("write the SIPp body file");
        }
        let out = std::fs::File::create(dir.path().join("sipp.out")).expect("create sipp.out");
        let mut cmd = Command::new("timeout");
        cmd.arg("--signal=TERM")
            .arg("--kill-after=2")
            .arg(lifetime.as_secs().to_string())
            .arg("sipp")
            .arg("-sf")
            .arg(Path::new(SCENARIOS).join(scenario))
            // Only 127.0.0.1, for SIP and for SIPp's control socket; one screen a minute.
            .args([
                "-i",
                "127.0.0.1",
                "-bind_local",
                "-ci",
                "127.0.0.1",
                "-f",
                "60",
            ])
            .arg("-p")
            .arg(port.to_string())
            // No BYE when a call is aborted: there is no call here, only MESSAGE and
            // SUBSCRIBE dialogs. A request that arrives while SIPp is between two steps of a
            // scenario (a NOTIFY right behind the SUBSCRIBE's 200, say) is not an abort: it
            // goes unanswered, and the sender's retransmission over UDP is taken in the step
            // that expects it.
            .args(["-nostdin", "-default_behaviors", "all,-bye,-abortunexp"])
            .args(["-trace_msg", "-message_file"])
            .arg(dir.path().join("messages.log"))
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(args);
        if let Some(remote) = remote {
            cmd.arg(remote);
        }
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone sipp.out"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Sipp {
            what,
            dir: Some(dir),
            child: Mutex::new(child),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir
            .as_ref()
            .expect("the SIPp directory")
            .path()
            .join(name)
    }

    /// Everything received so far.
    fn received(&self) -> Vec<SipMessage> {
        received_messages(&std::fs::read(self.path("messages.log")).unwrap_or_default())
    }

    /// The exit status, once the process has exited.
    fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.try_wait().expect("check the SIPp process")
    }

    /// SIPp's errors, its last screen and the end of its message trace.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        for (name, lines) in [("errors.log", 20), ("sipp.out", 12), ("messages.log", 80)] {
            let content = std::fs::read(self.path(name)).unwrap_or_default();
            let content = String::from_utf8_lossy(&content);
            let all: Vec<&str> = content.lines().collect();
            if all.is_empty() {
                let _ = write!(text, "\n--- {name}: empty");
                continue;
            }
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            let _ = write!(text, "\n--- {name} (last {lines} lines):\n{tail}");
        }
        text
    }

    /// Waits until `check` finds what it looks for in the received messages; panics after
    /// `timeout`, or earlier if SIPp exits without it.
    async fn poll<T>(
        &self,
        waiting_for: &str,
        timeout: Duration,
        mut check: impl FnMut(&[SipMessage]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            // Look at the exit status first, so that a message written just before the exit
            // is still seen.
            let exited = self.exited();
            if let Some(found) = check(&self.received()) {
                return found;
            }
            if let Some(status) = exited {
                panic!(
                    "{} exited ({status}) before {waiting_for}{}",
                    self.what,
                    self.diagnostics()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not get {waiting_for} within {timeout:?}{}",
                    self.what,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the process exits; panics after `timeout`.
    async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not finish within {timeout:?}{}",
                    self.what,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until SIPp has bound its UDP port (it has then read the scenario and listens).
    async fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !udp_bound(port) {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) during start-up{}",
                    self.what,
                    self.diagnostics()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not bind 127.0.0.1:{port} within 10 s{}",
                    self.what,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `signal` to the process group `timeout` leads (it makes one of its own), so
    /// SIPp gets it too: `STOP` freezes the agent (what arrives waits in its socket,
    /// unanswered), `CONT` lets it go on.
    fn signal_group(&self, signal: &str) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{}", child.id()))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.what);
    }

    /// Stops the process (SIGTERM to `timeout`, which passes it on to SIPp).
    fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "--- {}: its files are kept in {}",
                self.what,
                kept.display()
            );
        }
    }
}

/// Runs a client scenario against the proxy to its end and returns the final status code
/// of its request. Panics when no final answer came, or when SIPp failed despite a 2xx.
async fn request(what: String, scenario: &str, args: &[String], body: Option<&[u8]>) -> u16 {
    require_kamailio();
    let mut all = vec!["-m".to_owned(), "1".to_owned()];
    all.extend_from_slice(args);
    let sipp = Sipp::spawn(
        what,
        scenario,
        free_udp_port(),
        Some(PROXY),
        &all,
        body,
        REQUEST_TIMEOUT,
    );
    let exit = sipp
        .wait_exit(REQUEST_TIMEOUT + Duration::from_secs(5))
        .await;
    let Some(status) = final_status(&sipp.received()) else {
        panic!(
            "{} got no final answer (SIPp {exit}){}",
            sipp.what,
            sipp.diagnostics()
        );
    };
    if (200..300).contains(&status) && !exit.success() {
        panic!(
            "{} got {status} but SIPp failed ({exit}){}",
            sipp.what,
            sipp.diagnostics()
        );
    }
    status
}

// ---------------------------------------------------------------------------------------------
// One-shot requests
// ---------------------------------------------------------------------------------------------

/// Registers `sip:user@corp.localhost` with its own password, its Contact pointing at a user
/// agent on 127.0.0.1:`contact_port`, for `expires` seconds (0 removes that binding). Returns
/// the final status: 200 when registered.
pub async fn register(user: &str, contact_port: u16, expires: u32) -> u16 {
    register_as(
        user,
        (user, &password(user)),
        &contact(user, contact_port),
        expires,
    )
    .await
}

/// [`register`] with any `(auth user, password)` credentials and any Contact value (`*` with
/// `expires` 0 removes all bindings). Returns the final status: 401 again for a wrong
/// password, 403 for another user's credentials.
pub async fn register_as(
    user: &str,
    (auth_user, password): (&str, &str),
    contact: &str,
    expires: u32,
) -> u16 {
    let args: Vec<String> = [
        "-s", user, "-au", auth_user, "-ap", password, "-key", "contact", contact, "-key",
        "expires",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([expires.to_string()])
    .collect();
    request(
        format!("SIPp REGISTER of {user} as {auth_user} (contact {contact}, expires {expires})"),
        "register.xml",
        &args,
        None,
    )
    .await
}

/// Removes every binding of `user` at the registrar (`Contact: *`, `Expires: 0`); panics
/// unless the registrar accepted.
pub async fn unregister_all(user: &str) {
    let status = register_as(user, (user, &password(user)), "*", 0).await;
    assert_eq!(status, 200, "unregistering every contact of {user}");
}

/// Sends a SIP MESSAGE from `sip:user@corp.localhost` (with its password) to `to_uri` through
/// the proxy. Returns the final status: 200 when the target's user agent accepted it, 404
/// when the target is not registered, 408 when its user agent did not answer.
pub async fn send_message(user: &str, to_uri: &str, content_type: &str, body: &str) -> u16 {
    send_message_as(
        &uri(user),
        (user, &password(user)),
        to_uri,
        content_type,
        body,
    )
    .await
}

/// [`send_message`] from any `from_uri`, answering a challenge with the `(auth user,
/// password)` credentials. Returns 403 when the proxy refuses the sender.
pub async fn send_message_as(
    from_uri: &str,
    (auth_user, password): (&str, &str),
    to_uri: &str,
    content_type: &str,
    body: &str,
) -> u16 {
    let args: Vec<String> = [
        "-key",
        "from",
        from_uri,
        "-key",
        "to",
        to_uri,
        "-key",
        "content_type",
        content_type,
        "-au",
        auth_user,
        "-ap",
        password,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    request(
        format!("SIPp MESSAGE from {from_uri} to {to_uri} ({content_type})"),
        "send_message.xml",
        &args,
        Some(body.as_bytes()),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// MESSAGE sink
// ---------------------------------------------------------------------------------------------

/// A MESSAGE as a user agent received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The Request-URI (after the proxy: the registered contact, or the gateway address).
    pub request_uri: String,
    /// The URI of the From header.
    pub from: String,
    /// The URI of the To header.
    pub to: String,
    /// The Content-Type header ("" without one).
    pub content_type: String,
    /// The body.
    pub body: String,
    /// The whole message.
    pub message: SipMessage,
}

/// A user agent on 127.0.0.1:`port` that answers every MESSAGE with 200 OK (OPTIONS too, and
/// any other request with 405), until dropped. Register a user with its port as contact, or
/// start it on [`GATEWAY_PORT`] to stand in for the bridge.
pub struct MessageSink {
    sipp: Sipp,
    port: u16,
}

impl MessageSink {
    /// Starts listening; returns once the port is bound.
    pub async fn start(port: u16) -> MessageSink {
        assert!(
            !udp_bound(port),
            "cannot start a MESSAGE sink: 127.0.0.1:{port} is already in use"
        );
        let sipp = Sipp::spawn(
            format!("SIPp MESSAGE sink on 127.0.0.1:{port}"),
            "message_sink.xml",
            port,
            None,
            &[],
            None,
            AGENT_LIFETIME,
        );
        sipp.wait_listening(port).await;
        MessageSink { sipp, port }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The MESSAGEs received so far, in order (retransmissions left out).
    pub fn received(&self) -> Vec<Received> {
        MessageSink::messages(&self.sipp.received())
    }

    fn messages(received: &[SipMessage]) -> Vec<Received> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for m in received {
            if m.method() != Some("MESSAGE") {
                continue;
            }
            // A retransmission repeats Call-ID and CSeq (and the proxy's branch).
            let key = (
                m.header("Call-ID").unwrap_or("").to_owned(),
                m.header("CSeq").unwrap_or("").to_owned(),
            );
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            out.push(Received {
                request_uri: m.request_uri().unwrap_or("").to_owned(),
                from: m.header_uri("From"),
                to: m.header_uri("To"),
                content_type: m.header("Content-Type").unwrap_or("").to_owned(),
                body: m.body.clone(),
                message: m.clone(),
            });
        }
        out
    }

    /// Waits until at least `count` MESSAGEs have arrived and returns all received so far.
    pub async fn wait(&self, count: usize, timeout: Duration) -> Vec<Received> {
        self.sipp
            .poll(&format!("{count} MESSAGE(s)"), timeout, |received| {
                let got = MessageSink::messages(received);
                (got.len() >= count).then_some(got)
            })
            .await
    }

    /// Waits for a MESSAGE that `matches` and returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> Received {
        self.sipp
            .poll(&format!("MESSAGE {what}"), timeout, |received| {
                MessageSink::messages(received)
                    .into_iter()
                    .find(|r| matches(r))
            })
            .await
    }

    /// Every request received so far (MESSAGE or not), for assertions on other traffic.
    pub fn requests(&self) -> Vec<SipMessage> {
        self.sipp
            .received()
            .into_iter()
            .filter(|m| m.method().is_some())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------------------------

/// The text of the first element called `local` (any namespace prefix) in an XML document,
/// with the five predefined entities decoded.
pub fn xml_text(xml: &str, local: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let name = tag.split_whitespace().next().unwrap_or("");
        let name = name.rsplit(':').next().unwrap_or(name);
        if !tag.starts_with(['/', '?', '!']) && !tag.ends_with('/') && name == local {
            let text = &rest[end + 1..];
            let text = &text[..text.find('<').unwrap_or(text.len())];
            return Some(
                text.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            );
        }
    }
    None
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A NOTIFY a watcher received.
#[derive(Clone, Debug)]
pub struct Notify {
    /// The Subscription-State header: `active;expires=600`, `terminated;reason=timeout`...
    pub state: String,
    /// The Content-Type header ("" without one).
    pub content_type: String,
    /// The body (PIDF for presence; may be empty).
    pub body: String,
    /// The whole message.
    pub message: SipMessage,
}

impl Notify {
    /// The PIDF `<basic>` status: "open" or "closed".
    pub fn basic(&self) -> Option<String> {
        xml_text(&self.body, "basic")
    }

    /// The first PIDF `<note>`.
    pub fn note(&self) -> Option<String> {
        xml_text(&self.body, "note")
    }

    /// The CSeq number: each NOTIFY of a subscription has a higher one than the last.
    pub fn cseq(&self) -> Option<u32> {
        self.message
            .header("CSeq")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// A SIP user watching someone's presence: it SUBSCRIBEs through the proxy (answering the
/// challenge) and answers every NOTIFY with 200, until the subscription ends or it is dropped.
pub struct Watcher {
    sipp: Sipp,
}

impl Watcher {
    /// `sip:user@corp.localhost` subscribes to the presence of `target` for `expires` seconds.
    pub fn subscribe(user: &str, target: &str, expires: u32) -> Watcher {
        Watcher::start(user, target, expires, 0)
    }

    /// Like [`Watcher::subscribe`], and once the subscription is accepted and
    /// `after_notifies` NOTIFYs have arrived, unsubscribes (Expires: 0, in the dialog). The
    /// process ends with the notifier's final NOTIFY; see [`Watcher::finish`].
    pub fn subscribe_then_unsubscribe(
        user: &str,
        target: &str,
        expires: u32,
        after_notifies: u32,
    ) -> Watcher {
        assert!(after_notifies > 0, "unsubscribe after at least one NOTIFY");
        Watcher::start(user, target, expires, after_notifies)
    }

    fn start(user: &str, target: &str, expires: u32, after_notifies: u32) -> Watcher {
        require_kamailio();
        let from = uri(user);
        let args: Vec<String> = [
            "-m",
            "1",
            "-s",
            user,
            "-key",
            "from",
            &from,
            "-key",
            "to",
            target,
            "-au",
            user,
            "-ap",
            &password(user),
            "-key",
            "expires",
            &expires.to_string(),
            "-set",
            "unsubscribe_after",
            &after_notifies.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Watcher {
            sipp: Sipp::spawn(
                format!("SIPp presence watcher {from} of {target}"),
                "presence_watcher.xml",
                free_udp_port(),
                Some(PROXY),
                &args,
                None,
                AGENT_LIFETIME,
            ),
        }
    }

    /// Waits for the final answer to the SUBSCRIBE (after the challenge) and returns its
    /// status: 200 or 202 when accepted.
    pub async fn status(&self, timeout: Duration) -> u16 {
        self.sipp
            .poll("final answer to the SUBSCRIBE", timeout, |messages| {
                let mut finals = messages
                    .iter()
                    .filter(|m| m.cseq_method() == Some("SUBSCRIBE"))
                    .filter_map(SipMessage::status)
                    .filter(|s| *s >= 200);
                match finals.next()? {
                    401 | 407 => finals.next(),
                    status => Some(status),
                }
            })
            .await
    }

    /// The NOTIFYs received so far, in order (retransmissions left out).
    pub fn notifies(&self) -> Vec<Notify> {
        Watcher::notifies_in(&self.sipp.received())
    }

    /// Freezes the watcher: NOTIFYs wait in its socket, unanswered, until
    /// [`Watcher::resume`].
    pub fn pause(&self) {
        self.sipp.signal_group("STOP");
    }

    /// Lets a paused watcher read and answer again.
    pub fn resume(&self) {
        self.sipp.signal_group("CONT");
    }

    fn notifies_in(received: &[SipMessage]) -> Vec<Notify> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for m in received {
            if m.method() != Some("NOTIFY") {
                continue;
            }
            let cseq = m.header("CSeq").unwrap_or("").to_owned();
            if seen.contains(&cseq) {
                continue;
            }
            seen.push(cseq);
            out.push(Notify {
                state: m.header("Subscription-State").unwrap_or("").to_owned(),
                content_type: m.header("Content-Type").unwrap_or("").to_owned(),
                body: m.body.clone(),
                message: m.clone(),
            });
        }
        out
    }

    /// Waits until at least `count` NOTIFYs have arrived and returns all received so far.
    pub async fn wait(&self, count: usize, timeout: Duration) -> Vec<Notify> {
        self.sipp
            .poll(&format!("{count} NOTIFY(s)"), timeout, |received| {
                let got = Watcher::notifies_in(received);
                (got.len() >= count).then_some(got)
            })
            .await
    }

    /// Waits for a NOTIFY that `matches` (e.g. `|n| n.basic().as_deref() == Some("open")`).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Notify) -> bool,
    ) -> Notify {
        self.sipp
            .poll(&format!("NOTIFY {what}"), timeout, |received| {
                Watcher::notifies_in(received)
                    .into_iter()
                    .find(|n| matches(n))
            })
            .await
    }

    /// Waits until the subscription has ended (a NOTIFY with `terminated` was answered and
    /// SIPp exited), asserts that SIPp succeeded, and returns every NOTIFY.
    pub async fn finish(self, timeout: Duration) -> Vec<Notify> {
        let status = self.sipp.wait_exit(timeout).await;
        assert!(
            status.success(),
            "{} failed ({status}){}",
            self.sipp.what,
            self.sipp.diagnostics()
        );
        self.notifies()
    }
}

/// A SUBSCRIBE a notifier received, and how its NOTIFY was answered.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// The Request-URI (after the proxy: the registered contact).
    pub request_uri: String,
    /// The URI of the From header: who subscribes.
    pub from: String,
    /// The URI of the To header: whose presence.
    pub to: String,
    /// The Event header.
    pub event: String,
    /// The Expires header, if any.
    pub expires: Option<u32>,
    /// The final status of the answer to the NOTIFY that followed (200 when accepted).
    pub notify_status: u16,
    /// The SUBSCRIBE.
    pub message: SipMessage,
}

/// A SIP user whose presence is watched: on 127.0.0.1:`port` it accepts SUBSCRIBEs (200) and
/// NOTIFYs its presence as PIDF (`basic` open or closed, and a `note`), refreshes included;
/// an unsubscribe gets a final `terminated` NOTIFY. Runs until dropped; register a user with
/// its port as contact.
pub struct Notifier {
    sipp: Sipp,
    port: u16,
}

impl Notifier {
    /// The subscription lifetime it grants.
    pub const EXPIRES: u32 = 600;

    /// Starts listening; returns once the port is bound.
    pub async fn start(port: u16, basic_open: bool, note: &str) -> Notifier {
        assert!(
            !udp_bound(port),
            "cannot start a presence notifier: 127.0.0.1:{port} is already in use"
        );
        let basic = if basic_open { "open" } else { "closed" };
        let args: Vec<String> = [
            "-s",
            "notifier",
            "-key",
            "basic",
            basic,
            "-key",
            "note",
            &xml_escape(note),
            "-key",
            "expires",
            &Notifier::EXPIRES.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let sipp = Sipp::spawn(
            format!("SIPp presence notifier on 127.0.0.1:{port} ({basic}, {note:?})"),
            "presence_notifier.xml",
            port,
            None,
            &args,
            None,
            AGENT_LIFETIME,
        );
        sipp.wait_listening(port).await;
        Notifier { sipp, port }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every SUBSCRIBE received so far whose following NOTIFY was answered.
    fn subscriptions(messages: &[SipMessage]) -> Vec<Subscriber> {
        let mut out: Vec<Subscriber> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.method() != Some("SUBSCRIBE") {
                continue;
            }
            let call = m.header("Call-ID");
            let cseq = m.header("CSeq");
            if out
                .iter()
                .any(|s| s.message.header("Call-ID") == call && s.message.header("CSeq") == cseq)
            {
                continue;
            }
            // The answer to this dialog's next NOTIFY.
            let Some(notify_status) = messages[i + 1..]
                .iter()
                .filter(|r| r.header("Call-ID") == call && r.cseq_method() == Some("NOTIFY"))
                .filter_map(SipMessage::status)
                .find(|s| *s >= 200)
            else {
                continue;
            };
            out.push(Subscriber {
                request_uri: m.request_uri().unwrap_or("").to_owned(),
                from: m.header_uri("From"),
                to: m.header_uri("To"),
                event: m.header("Event").unwrap_or("").to_owned(),
                expires: m.header("Expires").and_then(|e| e.trim().parse().ok()),
                notify_status,
                message: m.clone(),
            });
        }
        out
    }

    /// Waits for the first subscription (a SUBSCRIBE whose NOTIFY was answered) and returns it.
    pub async fn wait(&self, timeout: Duration) -> Subscriber {
        self.sipp
            .poll("SUBSCRIBE with an answered NOTIFY", timeout, |messages| {
                Notifier::subscriptions(messages)
                    .into_iter()
                    .find(|s| s.expires != Some(0))
            })
            .await
    }

    /// Waits for an unsubscribe (SUBSCRIBE with Expires: 0 whose final NOTIFY was answered).
    pub async fn wait_unsubscribed(&self, timeout: Duration) -> Subscriber {
        self.sipp
            .poll("unsubscribe with an answered NOTIFY", timeout, |messages| {
                Notifier::subscriptions(messages)
                    .into_iter()
                    .find(|s| s.expires == Some(0))
            })
            .await
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SipMessage> {
        self.sipp
            .received()
            .into_iter()
            .filter(|m| m.method().is_some())
            .collect()
    }
}
