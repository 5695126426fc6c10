//! Stream management (XEP-0198): the state that outlives one connection (what was handled,
//! what was sent and not yet acknowledged), and setting a session up by resuming the previous
//! one or binding a new resource and sending again what the old one never got acknowledged.

use super::*;

/// Stream management state that outlives one connection.
#[derive(Default)]
pub(super) struct Sm {
    /// The resumption ID, when the server allows resumption.
    pub(super) id: Option<String>,
    /// Stanzas handled from the server (mod 2^32).
    pub(super) inbound: u32,
    /// Stanzas sent and not yet acknowledged, with their sequence numbers.
    pub(super) unacked: VecDeque<(u32, Element)>,
    /// Sequence number of the next stanza sent.
    pub(super) next_out: u32,
    /// Whether the current connection has stream management enabled.
    pub(super) enabled: bool,
    /// The full JID of the session.
    pub(super) bound: Option<FullJid>,
}

impl Sm {
    /// Drops the stanzas the server acknowledged (`h` = count of stanzas it handled).
    pub(super) fn acked(&mut self, h: u32) {
        while let Some((seq, _)) = self.unacked.front() {
            // Sequence numbers are mod 2^32: `seq` is acknowledged when it is before `h`.
            if h.wrapping_sub(*seq).wrapping_sub(1) < u32::MAX / 2 {
                self.unacked.pop_front();
            } else {
                break;
            }
        }
    }

    pub(super) fn sent(&mut self, el: Element) {
        if self.unacked.len() >= 10_000 {
            // Never acknowledged: the oldest is given up rather than grow without bound.
            self.unacked.pop_front();
        }
        self.unacked.push_back((self.next_out, el));
        self.next_out = self.next_out.wrapping_add(1);
    }
}

/// Sets up a session: resumes the previous one when the server still has it, else binds a
/// new resource (and resends what the old session never got acknowledged).
pub(super) async fn connect(
    settings: &Settings,
    guard: &Guard,
    sm: &mut Sm,
) -> Result<(Xml, FullJid, bool, Vec<Element>), SessionError> {
    let (features, mut xml) = authenticate(settings, guard).await?;
    let offers_sm = features.stream_management.is_some();
    sm.enabled = false;
    if offers_sm && let Some(previd) = sm.id.clone() {
        send(
            &mut xml,
            &sm::Resume {
                h: sm.inbound,
                previd: sm::StreamId(previd),
            }
            .into(),
        )
        .await?;
        let el = read(&mut xml, guard).await?;
        // Read by hand: the crate's `Resumed` refuses an answer without `previd`, which
        // says nothing this session needs.
        if el.is("resumed", SM_NS) {
            let h = el
                .attr("h")
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| transient("the server resumed without saying what it handled"))?;
            sm.acked(h);
            sm.enabled = true;
            let resend: Vec<Element> = sm.unacked.iter().map(|(_, e)| e.clone()).collect();
            for el in &resend {
                send(&mut xml, el).await?;
            }
            info!(jid = %settings.jid, resent = resend.len(), "XMPP stream resumed");
            let jid = sm
                .bound
                .clone()
                .ok_or_else(|| transient("resumed a stream never bound"))?;
            return Ok((xml, jid, true, Vec::new()));
        }
        debug!(jid = %settings.jid, "the server could not resume the stream; starting a new session");
        if let Some(h) = el.attr("h").and_then(|h| h.parse().ok()) {
            sm.acked(h);
        }
        sm.id = None;
    }
    let jid = bind(&mut xml, guard, &settings.resource).await?;
    sm.inbound = 0;
    // What the old session never got acknowledged goes out again on the new one.
    let pending: Vec<Element> = std::mem::take(&mut sm.unacked)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    sm.next_out = 0;
    let mut early = Vec::new();
    if offers_sm {
        send(&mut xml, &sm::Enable::new().with_resume().into()).await?;
        // Stanzas before the answer are not counted; they are handled first once the
        // session runs.
        let el = loop {
            let el = read(&mut xml, guard).await?;
            if el.has_ns(SM_NS) {
                break el;
            }
            early.push(el);
        };
        if let Ok(enabled) = sm::Enabled::try_from(el) {
            sm.enabled = true;
            sm.id = enabled
                .resume
                .then_some(enabled.id)
                .flatten()
                .map(|id| id.0);
            debug!(jid = %settings.jid, resumable = sm.id.is_some(), "stream management on");
        } else {
            debug!(jid = %settings.jid, "the server refused stream management");
        }
    }
    for el in pending {
        send(&mut xml, &el).await?;
        if sm.enabled {
            sm.sent(el);
        }
    }
    sm.bound = Some(jid.clone());
    Ok((xml, jid, false, early))
}

pub(super) fn ack(h: u32) -> Element {
    sm::A::new(h).into()
}
