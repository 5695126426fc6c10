//! list-portals, start-chat, bridge, unbridge, delete-portal, set-relay, unset-relay.

use futures::FutureExt;

use super::{Command, Ctx, Place, Reply, pick_network};
use crate::bridge::{BridgeError, Bridged};
use crate::config::PermissionLevel;
use crate::network::{ChatKind, NetworkId};
use crate::store::{PortalKey, PortalRecord};

pub(super) fn commands() -> Vec<Command> {
    vec![
        Command {
            name: "list-portals",
            aliases: &["portals"],
            args: "",
            help: "List your bridged chats (admins see all).",
            section: "Chats",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| list_portals(ctx, args).boxed(),
        },
        Command {
            name: "start-chat",
            aliases: &["pm"],
            args: "<network> <user>",
            help: "Open a direct chat with someone on another network.",
            section: "Chats",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| start_chat(ctx, args).boxed(),
        },
        Command {
            name: "join",
            aliases: &[],
            args: "<network> <group chat>",
            help: "Join a group chat on another network: you are invited to its room.",
            section: "Chats",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| join(ctx, args).boxed(),
        },
        Command {
            name: "bridge",
            aliases: &[],
            args: "<network> <group chat>",
            help: "Bridge this room to a group chat on another network.",
            section: "Chats",
            level: PermissionLevel::User,
            place: Place::NotPortal,
            run: |ctx, args| bridge_room(ctx, args).boxed(),
        },
        Command {
            name: "unbridge",
            aliases: &[],
            args: "",
            help: "Stop bridging this room; the room stays.",
            section: "Chats",
            level: PermissionLevel::User,
            place: Place::Portal,
            run: |ctx, args| unbridge(ctx, args).boxed(),
        },
        Command {
            name: "set-relay",
            aliases: &[],
            args: "",
            help: "Relay messages of users without their own login through your account in this room.",
            section: "Chats",
            level: PermissionLevel::User,
            place: Place::Portal,
            run: |ctx, args| set_relay(ctx, args).boxed(),
        },
        Command {
            name: "unset-relay",
            aliases: &[],
            args: "",
            help: "Stop relaying in this room.",
            section: "Chats",
            level: PermissionLevel::User,
            place: Place::Portal,
            run: |ctx, args| unset_relay(ctx, args).boxed(),
        },
        Command {
            name: "delete-portal",
            aliases: &[],
            args: "",
            help: "Remove the bridge from this room: ghosts leave and the mapping is forgotten.",
            section: "Administration",
            level: PermissionLevel::Admin,
            place: Place::Portal,
            run: |ctx, args| delete_portal(ctx, args).boxed(),
        },
    ]
}

/// The answer when the room's portal went away while the command waited for it.
const NO_LONGER_BRIDGED: &str = "This room is no longer bridged.";

/// Parses a group chat address of `network`; `None` when the network has no group chats.
fn group_chat(
    ctx: &Ctx<'_>,
    network: &NetworkId,
    raw: &str,
) -> Result<Option<crate::network::RemoteChatId>, BridgeError> {
    let connector = ctx.bridge.network(network)?;
    connector
        .parse_group_chat_id(raw)
        .map_err(|source| BridgeError::Network {
            network: network.clone(),
            source,
        })
}

/// The answer when `network` has no group chats.
fn no_group_chats(ctx: &Ctx<'_>, network: &NetworkId) -> Result<String, BridgeError> {
    let connector = ctx.bridge.network(network)?;
    Ok(format!(
        "{} has no group chats.",
        connector.info().display_name
    ))
}

/// Whether the caller may change what this room is bridged to: a bridge admin, or a room
/// member with the power to change the room's state (`m.bridge`, else `state_default`).
async fn may_change_bridging(ctx: &Ctx<'_>) -> Result<bool, BridgeError> {
    if ctx.level >= PermissionLevel::Admin {
        return Ok(true);
    }
    ctx.bridge
        .may_change_bridging(ctx.room_id, ctx.sender)
        .await
}

/// Whether the caller may manage this portal: its owner for a direct chat, an admin, or
/// for a group chat someone with the power to change the room's state.
async fn may_manage(ctx: &Ctx<'_>, p: &PortalRecord) -> Result<bool, BridgeError> {
    match &p.key.receiver {
        Some(owner) => Ok(owner == ctx.sender || ctx.level >= PermissionLevel::Admin),
        None => may_change_bridging(ctx).await,
    }
}

async fn list_portals(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let all = ctx.bridge.all_portals()?;
    let mine: Vec<_> = all
        .iter()
        .filter(|p| {
            ctx.level >= PermissionLevel::Admin || p.key.receiver.as_deref() == Some(ctx.sender)
        })
        .collect();
    if mine.is_empty() {
        return Ok("No bridged chats yet. Use `start-chat` to open one.".into());
    }
    let mut out = format!("{} bridged chats:\n", mine.len());
    for p in mine {
        let kind = match p.kind {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
            ChatKind::Fanout => "room members",
        };
        out.push_str(&format!(
            "- {} {} ({kind}{}): {}\n",
            p.key.network,
            p.key.chat,
            p.key
                .receiver
                .as_deref()
                .map(|r| format!(", for {r}"))
                .unwrap_or_default(),
            p.room_id
        ));
    }
    Ok(out.trim_end().to_owned())
}

async fn start_chat(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    let by_scheme = |user: &str| {
        // A URI names its network by its scheme (`sip:bob@...`, `xmpp:bob@...`).
        let scheme = user.split_once(':')?.0.to_ascii_lowercase();
        ctx.bridge
            .connectors()
            .find(|(_, c)| c.info().protocol == scheme)
            .map(|(id, _)| id.clone())
    };
    let (network, raw) = match args.as_slice() {
        [user] if ctx.bridge.only_network().is_some() => {
            (pick_network(ctx.bridge, None)?, user.clone())
        }
        [user] if by_scheme(user).is_some() => (by_scheme(user).expect("checked"), user.clone()),
        [network, user] => (pick_network(ctx.bridge, Some(network))?, user.clone()),
        _ => return Ok("Usage: `start-chat <network> <user>`".into()),
    };
    let connector = ctx.bridge.network(&network)?;
    let contact = connector.parse_user_id(&raw).map_err(|e| {
        BridgeError::Invalid(
            format!(
                "{e} (a {} address looks like {})",
                connector.info().display_name,
                connector.info().user_id_example
            )
            .into(),
        )
    })?;
    let (portal, created) = ctx
        .bridge
        .open_direct_chat(&network, &contact, ctx.sender)
        .await?;
    if !created {
        // Make sure the user is (again) in the room.
        let _ = ctx.bridge.invite_to_portal(&portal, ctx.sender).await;
        return Ok(format!(
            "You already have a chat with {contact}: {}",
            portal.room_id
        ));
    }
    Ok(format!(
        "Started a chat with {contact}: {} (you have been invited)",
        portal.room_id
    ))
}

async fn join(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    let (network, raw) = match args.as_slice() {
        [chat] if ctx.bridge.only_network().is_some() => {
            (pick_network(ctx.bridge, None)?, chat.clone())
        }
        [network, chat] => (pick_network(ctx.bridge, Some(network))?, chat.clone()),
        _ => return Ok("Usage: `join <network> <group chat>`".into()),
    };
    let connector = ctx.bridge.network(&network)?;
    let Some(chat) = group_chat(ctx, &network, &raw)? else {
        return no_group_chats(ctx, &network);
    };
    let key = PortalKey::new(network.as_str(), chat.as_str(), None);
    if ctx.bridge.portal(&key)?.is_none() {
        let exists =
            connector
                .group_chat_exists(&chat)
                .await
                .map_err(|source| BridgeError::Network {
                    network: network.clone(),
                    source,
                })?;
        if !exists {
            return Ok(format!(
                "There is no group chat {chat} on {}.",
                connector.info().display_name
            ));
        }
    }
    let alias = ctx.bridge.alias_localpart(&network, chat.as_str());
    let (portal, _) = ctx
        .bridge
        .open_group_chat(&key, Some(chat.as_str().to_owned()), alias)
        .await?;
    match ctx.bridge.invite_as_bot(&portal.room_id, ctx.sender).await {
        Ok(()) => {}
        Err(BridgeError::Matrix(e)) if e.errcode() == Some("M_FORBIDDEN") => {
            // Already in the room, or it is public: joining through the alias works too.
        }
        Err(e) => return Err(e),
    }
    Ok(format!(
        "You are invited to {chat}: {} (#{}:{})",
        portal.room_id,
        ctx.bridge.alias_localpart(&network, chat.as_str()),
        ctx.bridge.server_name()
    ))
}

async fn bridge_room(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    let [network, chat] = args.as_slice() else {
        return Ok("Usage: `bridge <network> <group chat>`".into());
    };
    let network: NetworkId = pick_network(ctx.bridge, Some(network))?;
    let connector = ctx.bridge.network(&network)?;
    let Some(chat) = group_chat(ctx, &network, chat)? else {
        return no_group_chats(ctx, &network);
    };
    if !may_change_bridging(ctx).await? {
        return Ok("Only room members who may change the room's settings can bridge it.".into());
    }
    if ctx.bridge.room_is_encrypted(None, ctx.room_id).await? {
        return Ok(crate::bridge::ENCRYPTED_ROOM_REFUSAL.into());
    }
    let key = PortalKey::new(network.as_str(), chat.as_str(), None);
    if let Bridged::Already { room_id } = ctx.bridge.bridge_room(&key, ctx.room_id).await? {
        return Ok(format!("{chat} is already bridged to {room_id}."));
    }
    Ok(format!(
        "This room is now bridged to {chat} on {}.",
        connector.info().display_name
    ))
}

async fn unbridge(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let portal = ctx.portal.clone().expect("checked: in a portal");
    if !may_manage(ctx, &portal).await? {
        return Ok(
            "Only the owner of this chat, a room moderator or a bridge admin can do that.".into(),
        );
    }
    if portal.kind == ChatKind::Direct {
        super::send_reply(
            ctx,
            "This direct chat is no longer bridged; the contact is leaving.",
        )
        .await;
        ctx.bridge
            .remove_portal(&portal.key, ctx.room_id, true)
            .await?;
        return Ok(String::new());
    }
    if !ctx
        .bridge
        .remove_portal(&portal.key, ctx.room_id, false)
        .await?
    {
        return Ok(NO_LONGER_BRIDGED.into());
    }
    Ok(format!(
        "This room is no longer bridged to {}.",
        portal.key.chat
    ))
}

async fn set_relay(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let portal = ctx.portal.clone().expect("checked: in a portal");
    if !ctx.bridge.config().bridge.relay.enabled {
        return Ok("Relay mode is turned off in the bridge configuration.".into());
    }
    if !may_manage(ctx, &portal).await? {
        return Ok(
            "Only the owner of this chat, a room moderator or a bridge admin can do that.".into(),
        );
    }
    let Some(login) = ctx
        .bridge
        .logins_of(ctx.sender, &portal.key.network)
        .into_iter()
        .next()
    else {
        return Ok(format!(
            "You need your own {} login to relay for others; send `login {}` in your management room.",
            portal.key.network, portal.key.network
        ));
    };
    let relay = Some((ctx.sender.to_owned(), login.id.clone()));
    if ctx
        .bridge
        .edit_portal(&portal.key, ctx.room_id, |p| p.relay = relay)
        .await?
        .is_none()
    {
        return Ok(NO_LONGER_BRIDGED.into());
    }
    Ok(format!(
        "Messages of users without their own login are now relayed through {} in this room.",
        login.remote_name
    ))
}

async fn unset_relay(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let portal = ctx.portal.clone().expect("checked: in a portal");
    if !may_manage(ctx, &portal).await? {
        return Ok(
            "Only the owner of this chat, a room moderator or a bridge admin can do that.".into(),
        );
    }
    let had_relay = ctx
        .bridge
        .edit_portal(&portal.key, ctx.room_id, |p| p.relay.take().is_some())
        .await?;
    Ok(match had_relay {
        None => NO_LONGER_BRIDGED.into(),
        Some(false) => "This room has no relay.".into(),
        Some(true) => "Relay turned off for this room.".into(),
    })
}

async fn delete_portal(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let portal = ctx.portal.clone().expect("checked: in a portal");
    // Say it first: the speaker leaves the room with the portal.
    super::send_reply(ctx, "Deleting this portal: the bridge is leaving the room.").await;
    ctx.bridge
        .remove_portal(&portal.key, ctx.room_id, true)
        .await?;
    Ok(String::new())
}
