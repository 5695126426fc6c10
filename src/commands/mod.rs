//! Bot commands: data (name, help, permission, where it may run) checked in one place, with
//! handlers grouped by topic.
//!
//! In the management room (a direct chat with the bot) commands need no prefix; elsewhere they
//! start with the configured prefix. Arguments with line breaks or control characters are
//! refused before any handler sees them.

mod contacts;
mod general;
mod login;
mod portals;

use futures::future::BoxFuture;
use ruma::EventId;
use tracing::{info, warn};

use crate::bridge::MatrixEvent;
use crate::bridge::{Bridge, BridgeError, room_id};
use crate::config::PermissionLevel;
use crate::network::ChatKind;
use crate::store::PortalRecord;

/// Where a command runs and who runs it.
pub struct Ctx<'a> {
    /// The bridge.
    pub bridge: &'a Bridge,
    /// Inbox sequence of the command message (for transaction IDs).
    pub seq: u64,
    /// Who sent the command.
    pub sender: &'a str,
    /// Where.
    pub room_id: &'a str,
    /// Whether this is the sender's management room.
    pub management: bool,
    /// The sender's permission level.
    pub level: PermissionLevel,
    /// The portal of this room, if it is one.
    pub portal: Option<PortalRecord>,
}

/// What a handler answers: a text for the room.
pub type Reply = Result<String, BridgeError>;

/// A command handler.
pub type Handler = for<'a> fn(&'a Ctx<'a>, Vec<String>) -> BoxFuture<'a, Reply>;

/// Where a command may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Anywhere.
    Anywhere,
    /// Only in a portal room.
    Portal,
    /// Only in a room that is not a portal.
    NotPortal,
}

/// One command, as data.
pub struct Command {
    /// Name typed by the user.
    pub name: &'static str,
    /// Other names.
    pub aliases: &'static [&'static str],
    /// Argument synopsis for help.
    pub args: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// Section in help.
    pub section: &'static str,
    /// Lowest level allowed to run it.
    pub level: PermissionLevel,
    /// Where it may run.
    pub place: Place,
    /// The handler.
    pub run: Handler,
}

/// Every command, in help order.
pub fn commands() -> &'static [Command] {
    static ALL: std::sync::OnceLock<Vec<Command>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut v = general::commands();
        v.extend(login::commands());
        v.extend(portals::commands());
        v.extend(contacts::commands());
        v
    })
}

/// Finds a command by name or alias (case-insensitive).
pub fn find(name: &str) -> Option<&'static Command> {
    let name = name.to_ascii_lowercase();
    commands()
        .iter()
        .find(|c| c.name == name || c.aliases.contains(&name.as_str()))
}

/// The command (name or alias) closest to a mistyped `word`, among those the caller may run
/// here: within two edits (one for words of up to four letters), the nearest first, ties by
/// the order of the command list.
pub fn suggest(
    word: &str,
    level: PermissionLevel,
    portal: Option<&PortalRecord>,
) -> Option<&'static str> {
    let word = word.to_lowercase();
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    commands()
        .iter()
        .filter(|c| check(c, level, portal).is_ok())
        .flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
        .map(|name| (edit_distance(&word, name), name))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Levenshtein distance with adjacent transpositions counted as one edit (so `hepl` is one
/// edit from `help`), over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for transpositions), previous, current.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// Why a command line is not run. The message is the bot's answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The line holds control characters (a line break, say).
    #[error("Commands and their arguments must be on one line, without control characters.")]
    ControlCharacters,
    /// The caller's permission level is below the command's.
    #[error("`{command}` needs the {needs:?} permission level; you have {has:?}.")]
    Level {
        /// The command.
        command: &'static str,
        /// The level it needs.
        needs: PermissionLevel,
        /// The caller's level.
        has: PermissionLevel,
    },
    /// The command works only in a bridged room.
    #[error("`{0}` only works in a bridged room.")]
    NotBridged(&'static str),
    /// The command does not work in a bridged room.
    #[error("`{0}` does not work in a room that is already bridged.")]
    Bridged(&'static str),
}

/// Splits a command line into words; refuses control characters.
pub fn parse(text: &str) -> Result<Vec<String>, Refusal> {
    if text.chars().any(char::is_control) {
        return Err(Refusal::ControlCharacters);
    }
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// Checks whether `cmd` may run for this caller in this place; the error says why not.
pub fn check(
    cmd: &Command,
    level: PermissionLevel,
    portal: Option<&PortalRecord>,
) -> Result<(), Refusal> {
    if level < cmd.level {
        return Err(Refusal::Level {
            command: cmd.name,
            needs: cmd.level,
            has: level,
        });
    }
    match (cmd.place, portal) {
        (Place::Portal, None) => Err(Refusal::NotBridged(cmd.name)),
        (Place::NotPortal, Some(_)) => Err(Refusal::Bridged(cmd.name)),
        _ => Ok(()),
    }
}

/// Handles a command message (or an answer to a login question in the management room).
pub async fn handle(
    bridge: &Bridge,
    seq: u64,
    ev: &MatrixEvent,
    text: &str,
    management: bool,
) -> Result<(), BridgeError> {
    let level = bridge.level(&ev.sender);
    let portal = bridge.portal_of_room(&ev.room_id)?;
    let ctx = Ctx {
        bridge,
        seq,
        sender: &ev.sender,
        room_id: &ev.room_id,
        management,
        level,
        portal,
    };
    let reply = if level == PermissionLevel::None {
        "You are not allowed to use this bridge.".to_owned()
    } else if let Some(field) = bridge
        .login_pending(&ev.sender)
        .await
        .filter(|_| management)
    {
        if text.trim().eq_ignore_ascii_case("cancel") {
            bridge.cancel_login(&ev.sender).await;
            "Login cancelled.".to_owned()
        } else {
            let kept = field.secret && !redact_secret(&ctx, &ev.event_id).await;
            let reply = login::answer(&ctx, text.trim()).await;
            if kept {
                format!(
                    "⚠ I could not delete your message holding the {}: delete it yourself.\n{reply}",
                    field.name
                )
            } else {
                reply
            }
        }
    } else {
        run_line(&ctx, text).await
    };
    send_reply(&ctx, &reply).await;
    Ok(())
}

async fn run_line(ctx: &Ctx<'_>, text: &str) -> String {
    let words = match parse(text) {
        Ok(w) => w,
        Err(e) => return e.to_string(),
    };
    let Some((name, args)) = words.split_first() else {
        return "Send `help` for the list of commands.".to_owned();
    };
    let Some(cmd) = find(name) else {
        // The word is not repeated: after an interrupted login it may be a password.
        return match suggest(name, ctx.level, ctx.portal.as_ref()) {
            Some(near) => format!(
                "Unknown command. Did you mean `{near}`? Send `help` for the list of commands."
            ),
            None => "Unknown command. Send `help` for the list of commands.".to_owned(),
        };
    };
    if let Err(e) = check(cmd, ctx.level, ctx.portal.as_ref()) {
        return e.to_string();
    }
    info!(
        command = cmd.name,
        user = ctx.sender,
        room_id = ctx.room_id,
        "running command"
    );
    match (cmd.run)(ctx, args.to_vec()).await {
        Ok(text) => text,
        Err(e) => {
            warn!(command = cmd.name, error = %crate::error::chain(&e), "command failed");
            format!("`{}` failed: {e}", cmd.name)
        }
    }
}

/// Sends the answer: as the bot, or in a direct-chat portal (where the bot is not a member)
/// as the contact's ghost.
async fn send_reply(ctx: &Ctx<'_>, text: &str) {
    if text.is_empty() {
        return;
    }
    let speaker = match &ctx.portal {
        Some(p) if p.kind == ChatKind::Direct => Some(ctx.bridge.portal_speaker(p)),
        _ => None,
    };
    let txn = format!("isthmus.{}.reply.{}", ctx.seq, text.len());
    if let Err(e) = ctx
        .bridge
        .send_notice(speaker.as_deref(), ctx.room_id, &txn, text)
        .await
    {
        warn!(room_id = ctx.room_id, error = %crate::error::chain(&e), "could not send command reply");
    }
}

/// Redacts a message that holds a secret (a password typed during login); returns whether
/// it is gone.
async fn redact_secret(ctx: &Ctx<'_>, event_id: &str) -> bool {
    if room_id(ctx.room_id).is_err() || EventId::parse(event_id).is_err() {
        return false;
    }
    let txn = format!("isthmus.{}.redact", ctx.seq);
    match ctx
        .bridge
        .redact_as_bot(ctx.room_id, event_id, &txn, "contained a password")
        .await
    {
        Ok(()) => true,
        Err(e) => {
            warn!(room_id = ctx.room_id, error = %crate::error::chain(&e), "could not redact the message holding a password; delete it yourself");
            ctx.bridge
                .tell_missing_power(
                    ctx.room_id,
                    None,
                    crate::bridge::PowerNeed::Redact,
                    "remove the message holding your password (delete it yourself)",
                    &e,
                )
                .await;
            false
        }
    }
}

/// Picks the network a command is about: the named one, or the only one enabled.
pub fn pick_network(
    bridge: &Bridge,
    arg: Option<&String>,
) -> Result<crate::network::NetworkId, BridgeError> {
    match arg {
        Some(n) => {
            let id = crate::network::NetworkId::new(n.to_ascii_lowercase());
            bridge.network(&id)?;
            Ok(id)
        }
        None => bridge.only_network().cloned().ok_or_else(|| {
            BridgeError::Invalid(
                format!(
                    "name the network: {}",
                    bridge
                        .network_ids()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into(),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("help", "help"), 0);
        assert_eq!(edit_distance("hepl", "help"), 1);
        assert_eq!(edit_distance("hlp", "help"), 1);
        assert_eq!(edit_distance("statsu", "status"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("é", "e"), 1, "characters, not bytes");
    }

    #[test]
    fn typos_get_the_nearest_command_the_caller_may_run() {
        let user = PermissionLevel::User;
        assert_eq!(suggest("hepl", user, None), Some("help"));
        assert_eq!(suggest("HEPL", user, None), Some("help"));
        assert_eq!(suggest("lgoin", user, None), Some("login"));
        assert_eq!(suggest("contcts", user, None), Some("contacts"));
        assert_eq!(suggest("xyzzy", user, None), None);
        assert_eq!(suggest("h", user, None), None, "too far from anything");
        // Admin-only commands are offered only to admins.
        assert_eq!(suggest("quarantin", user, None), None);
        assert_eq!(
            suggest("quarantin", PermissionLevel::Admin, None),
            Some("quarantine")
        );
        // Commands for bridged rooms are not offered outside them.
        assert_eq!(suggest("unbrige", user, None), None);
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(parse("login xmpp\nrm").is_err());
        assert!(parse("login\u{0}").is_err());
        assert!(parse("start-chat\rx").is_err());
        assert_eq!(
            parse("  start-chat  loopback bob ").unwrap(),
            vec!["start-chat", "loopback", "bob"]
        );
    }

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in commands() {
            for n in std::iter::once(c.name).chain(c.aliases.iter().copied()) {
                assert!(seen.insert(n), "duplicate command name {n}");
            }
        }
        assert!(find("HELP").is_some());
        assert!(find("pm").is_some_and(|c| c.name == "start-chat"));
    }

    #[test]
    fn permission_and_place_checks() {
        let admin_cmd = find("delete-portal").unwrap();
        assert!(check(admin_cmd, PermissionLevel::User, None).is_err());
        assert!(check(find("set-relay").unwrap(), PermissionLevel::User, None).is_err());
        assert!(check(find("help").unwrap(), PermissionLevel::Relay, None).is_ok());
        assert!(check(find("login").unwrap(), PermissionLevel::Relay, None).is_err());
    }
}
