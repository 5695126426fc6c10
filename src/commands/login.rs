//! login, logout, logins, and answers to login questions.

use futures::FutureExt;
use tracing::warn;

use super::{Command, Ctx, Place, Reply, pick_network};
use crate::bridge::{LINK_LIFETIME, LoginProgress};
use crate::config::PermissionLevel;
use crate::network::LoginId;

pub(super) fn commands() -> Vec<Command> {
    vec![
        Command {
            name: "login",
            aliases: &[],
            args: "[network] [flow]",
            help: "Log in to a network with your own account (in your management room).",
            section: "Accounts",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| login(ctx, args).boxed(),
        },
        Command {
            name: "logout",
            aliases: &[],
            args: "<network> [login-id]",
            help: "Log out of a network and forget the stored credentials.",
            section: "Accounts",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| logout(ctx, args).boxed(),
        },
        Command {
            name: "logins",
            aliases: &["list-logins"],
            args: "",
            help: "List your logins and their state.",
            section: "Accounts",
            level: PermissionLevel::User,
            place: Place::Anywhere,
            run: |ctx, args| logins(ctx, args).boxed(),
        },
    ]
}

fn progress_text(p: LoginProgress) -> String {
    match p {
        LoginProgress::Ask(field, instructions) => {
            let mut s = instructions.map(|i| format!("{i}\n")).unwrap_or_default();
            s.push_str(&format!("Send your {}", field.name));
            if field.secret {
                s.push_str(" (the message will be redacted)");
            }
            s.push_str(", or `cancel`.");
            s
        }
        LoginProgress::Done(name) => format!("Logged in as {name}."),
    }
}

async fn login(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    if !ctx.management {
        return Ok("Log in from your management room (a direct chat with me), so that nobody else sees your credentials.".into());
    }
    let with_flows: Vec<_> = ctx
        .bridge
        .connectors()
        .filter(|(_, c)| !c.login_flows().is_empty())
        .map(|(id, _)| id.clone())
        .collect();
    let network = match args.first() {
        Some(_) => pick_network(ctx.bridge, args.first())?,
        None if with_flows.len() == 1 => with_flows[0].clone(),
        None => {
            return Ok(format!(
                "Name the network to log in to: {}",
                with_flows
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    ctx.bridge.cancel_login_pages(ctx.sender).await;
    let progress = ctx
        .bridge
        .begin_login(ctx.sender, &network, args.get(1).map(String::as_str))
        .await?;
    Ok(present(ctx, progress).await)
}

/// What the room hears about a login step. A step asking for a secret never asks in chat
/// when it can be helped: it goes to a login page when the bridge has a public URL, else it
/// is asked only in a room where the bot can redact the answer (a new one if need be).
async fn present(ctx: &Ctx<'_>, progress: LoginProgress) -> String {
    let LoginProgress::Ask(_, Some(instructions)) = &progress else {
        return progress_text(progress);
    };
    let remaining = ctx.bridge.login_remaining_fields(ctx.sender).await;
    if !remaining.iter().any(|f| f.secret) {
        return progress_text(progress);
    }
    if let Some(link) = ctx
        .bridge
        .offer_login_page(ctx.sender, ctx.room_id, Some(instructions.clone()))
        .await
    {
        return format!(
            "Log in to {} on this page: {}\nThe link works for {} minutes, until you are logged in (`cancel` ends it). Your password goes straight to the bridge, never through Matrix; the outcome shows here.",
            link.network,
            link.url,
            LINK_LIFETIME.as_secs() / 60
        );
    }
    if ctx.bridge.bot_can_redact(ctx.room_id).await {
        return progress_text(progress);
    }
    match ctx.bridge.open_login_room(ctx.sender).await {
        Ok(room) => {
            let txn = format!("isthmus.{}.login-room", ctx.seq);
            if let Err(e) = ctx
                .bridge
                .send_notice(None, &room, &txn, &progress_text(progress))
                .await
            {
                warn!(room_id = %room, error = %crate::error::chain(&e), "could not ask the first login question in the new room");
            }
            "I cannot delete messages in this room (my power level is too low), so I will not ask for your password here. I invited you to a new room where I can: accept the invitation and go on with the login there. That room is your management room from now on.".into()
        }
        Err(e) => {
            ctx.bridge.cancel_login(ctx.sender).await;
            warn!(user = ctx.sender, error = %crate::error::chain(&e), "could not create a room to log in");
            format!(
                "I cannot delete messages in this room (my power level is too low), so I will not ask for your password here, and I could not create a room where I can ({e}). Give me the moderator level here, then send `login` again."
            )
        }
    }
}

/// Handles the answer to the pending login question.
pub(super) async fn answer(ctx: &Ctx<'_>, value: &str) -> String {
    match ctx.bridge.login_input(ctx.sender, value).await {
        Ok(p) => present(ctx, p).await,
        Err(e) => format!("Login failed: {e}. Send `login` to try again."),
    }
}

async fn logout(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    let network = pick_network(ctx.bridge, args.first())?;
    let id = args.get(1).map(|s| LoginId::new(s.as_str()));
    let names = ctx.bridge.logout(ctx.sender, &network, id.as_ref()).await?;
    Ok(if names.is_empty() {
        format!("You have no login on {network} to log out of.")
    } else {
        format!("Logged out of {network}: {}.", names.join(", "))
    })
}

async fn logins(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let live = ctx.bridge.all_logins_of(ctx.sender);
    let stored = ctx.bridge.stored_logins_of(ctx.sender)?;
    if stored.is_empty() {
        return Ok("You have no logins. Send `login` to add one.".into());
    }
    let mut out = String::from("Your logins:\n");
    for (network, data) in stored {
        let state = live
            .iter()
            .find(|(n, l)| n.as_str() == network && l.id == data.id)
            .map(|(_, l)| l.client.state())
            .or_else(|| {
                ctx.bridge
                    .state_of(
                        &crate::network::NetworkId::new(network.as_str()),
                        Some(ctx.sender),
                    )
                    .map(|(s, _)| s)
            });
        out.push_str(&format!(
            "- {network} `{}` ({}): {}\n",
            data.id,
            data.remote_name,
            state.map(|s| s.as_str()).unwrap_or("UNKNOWN")
        ));
    }
    Ok(out.trim_end().to_owned())
}
