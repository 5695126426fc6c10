//! accept, deny, contacts: a user's contacts on networks with contact lists.

use futures::FutureExt;

use super::{Command, Ctx, Place, Reply, pick_network};
use crate::bridge::BridgeError;
use crate::config::PermissionLevel;
use crate::network::{NetworkError, NetworkId, Presence, PresenceState};

pub(super) fn commands() -> Vec<Command> {
    vec![
        Command {
            name: "accept",
            aliases: &[],
            args: "<network> <contact>",
            help: "Let a contact who asked see your presence.",
            section: "Contacts",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| answer(ctx, args, true).boxed(),
        },
        Command {
            name: "deny",
            aliases: &[],
            args: "<network> <contact>",
            help: "Refuse (or withdraw) a contact's view of your presence.",
            section: "Contacts",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| answer(ctx, args, false).boxed(),
        },
        Command {
            name: "presence",
            aliases: &[],
            args: "<online|away|offline> [status text]",
            help: "Set the presence your contacts on other networks see.",
            section: "Contacts",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| presence(ctx, args).boxed(),
        },
        Command {
            name: "contacts",
            aliases: &["roster"],
            args: "[network]",
            help: "List your contacts and who may see your presence.",
            section: "Contacts",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| contacts(ctx, args).boxed(),
        },
    ]
}

fn network_error(network: &NetworkId, source: NetworkError) -> BridgeError {
    BridgeError::Network {
        network: network.clone(),
        source,
    }
}

async fn answer(ctx: &Ctx<'_>, args: Vec<String>, accept: bool) -> Reply {
    let verb = if accept { "accept" } else { "deny" };
    let (network, raw) = match args.as_slice() {
        [contact] if ctx.bridge.only_network().is_some() => {
            (pick_network(ctx.bridge, None)?, contact)
        }
        [network, contact] => (pick_network(ctx.bridge, Some(network))?, contact),
        _ => return Ok(format!("Usage: `{verb} <network> <contact>`")),
    };
    let connector = ctx.bridge.network(&network)?;
    let contact = connector
        .parse_user_id(raw)
        .map_err(|e| network_error(&network, e))?;
    let Some(client) = ctx.bridge.user_client(ctx.sender, &network) else {
        return Ok(format!("You have no identity on {network}: log in first."));
    };
    let sender = ctx.bridge.matrix_sender(ctx.sender).await;
    client
        .answer_contact_request(&sender, &contact, accept)
        .await
        .map_err(|e| network_error(&network, e))?;
    Ok(if accept {
        format!("{contact} may now see your presence.")
    } else {
        format!("{contact} may not see your presence.")
    })
}

async fn presence(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    let state = match args.first().map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("online") => PresenceState::Online,
        Some("away" | "unavailable" | "busy") => PresenceState::Unavailable,
        Some("offline") => PresenceState::Offline,
        _ => return Ok("Usage: `presence <online|away|offline> [status text]`".into()),
    };
    let status = (args.len() > 1).then(|| args[1..].join(" "));
    let presence = Presence { state, status };
    let sender = ctx.bridge.matrix_sender(ctx.sender).await;
    let mut set = Vec::new();
    for network in ctx.bridge.network_ids() {
        let Some(client) = ctx.bridge.user_client(ctx.sender, network) else {
            continue;
        };
        match client.set_presence(&sender, &presence).await {
            Ok(()) => set.push(network.to_string()),
            Err(NetworkError::Unsupported(_)) => {}
            Err(e) => return Err(network_error(network, e)),
        }
    }
    Ok(if set.is_empty() {
        "No network shows your presence.".into()
    } else {
        format!("Presence set on {}.", set.join(", "))
    })
}

async fn contacts(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    let networks: Vec<NetworkId> = match args.first() {
        Some(_) => vec![pick_network(ctx.bridge, args.first())?],
        None => ctx.bridge.network_ids().cloned().collect(),
    };
    let sender = ctx.bridge.matrix_sender(ctx.sender).await;
    let mut out = String::new();
    for network in networks {
        let Some(client) = ctx.bridge.user_client(ctx.sender, &network) else {
            continue;
        };
        let list = match client.contacts(&sender).await {
            Ok(l) => l,
            Err(NetworkError::Unsupported(_)) => continue,
            Err(e) => return Err(network_error(&network, e)),
        };
        out.push_str(&format!("{network}: {} contacts\n", list.len()));
        for c in list {
            let mut notes = Vec::new();
            if c.sees_presence {
                notes.push("sees your presence");
            }
            if c.watched {
                notes.push("you see theirs");
            }
            if c.pending {
                notes.push("asks to see your presence: `accept` or `deny`");
            }
            out.push_str(&format!("- {}: {}\n", c.id, notes.join(", ")));
        }
    }
    if out.is_empty() {
        return Ok("No contacts yet.".into());
    }
    Ok(out.trim_end().to_owned())
}
