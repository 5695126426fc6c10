//! help, version, status, whoami, cancel.

use std::time::Instant;

use futures::FutureExt;

use super::{Command, Ctx, Place, Reply, check};
use crate::config::PermissionLevel;

pub(super) fn commands() -> Vec<Command> {
    vec![
        Command {
            name: "help",
            aliases: &[],
            args: "",
            help: "Show the commands you may run here.",
            section: "General",
            level: PermissionLevel::Relay,
            place: Place::Anywhere,
            run: |ctx, args| help(ctx, args).boxed(),
        },
        Command {
            name: "version",
            aliases: &[],
            args: "",
            help: "Show the bridge's version.",
            section: "General",
            level: PermissionLevel::Relay,
            place: Place::Anywhere,
            run: |_, _| async { Ok(format!("isthmus {}", env!("CARGO_PKG_VERSION"))) }.boxed(),
        },
        Command {
            name: "status",
            aliases: &["ping"],
            args: "",
            help: "Show the state of the homeserver connection, every network and your logins.",
            section: "General",
            level: PermissionLevel::Relay,
            place: Place::Anywhere,
            run: |ctx, args| status(ctx, args).boxed(),
        },
        Command {
            name: "whoami",
            aliases: &[],
            args: "",
            help: "Show who you are to the bridge: permission level, management room, logins.",
            section: "General",
            level: PermissionLevel::Relay,
            place: Place::Anywhere,
            run: |ctx, args| whoami(ctx, args).boxed(),
        },
        Command {
            name: "quarantine",
            aliases: &[],
            args: "[retry <number> | retry all]",
            help: "List the items set aside after failing too often, or send them again.",
            section: "Administration",
            level: PermissionLevel::Admin,
            place: Place::Anywhere,
            run: |ctx, args| quarantine(ctx, args).boxed(),
        },
        Command {
            name: "cancel",
            aliases: &[],
            args: "",
            help: "Cancel a login in progress (its login link stops working).",
            section: "General",
            level: PermissionLevel::Relay,
            place: Place::Anywhere,
            run: |ctx, _| {
                async move {
                    let chat = ctx.bridge.cancel_login(ctx.sender).await;
                    let page = ctx.bridge.cancel_login_pages(ctx.sender).await;
                    Ok(if chat || page {
                        "Login cancelled.".to_owned()
                    } else {
                        "Nothing to cancel.".to_owned()
                    })
                }
                .boxed()
            },
        },
    ]
}

async fn help(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let prefix = if ctx.management {
        String::new()
    } else {
        format!("{} ", ctx.bridge.config().bridge.command_prefix)
    };
    let mut out = String::new();
    let mut section = "";
    for c in super::commands() {
        if check(c, ctx.level, ctx.portal.as_ref()).is_err() {
            continue;
        }
        if c.section != section {
            section = c.section;
            out.push_str(&format!("\n**{section}**\n"));
        }
        let args = if c.args.is_empty() {
            String::new()
        } else {
            format!(" {}", c.args)
        };
        out.push_str(&format!("- `{prefix}{}{args}`: {}\n", c.name, c.help));
    }
    Ok(format!("Commands you can run here:\n{out}")
        .trim_end()
        .to_owned())
}

async fn status(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let b = ctx.bridge;
    let started = Instant::now();
    let hs = match b.check_homeserver().await {
        Ok(_) => format!("connected ({} ms)", started.elapsed().as_millis()),
        Err(e) => format!("ERROR: {e}"),
    };
    let mut out = format!("Homeserver: {hs}\n");
    match b.store_failure() {
        None => out.push_str("Store: ok\n"),
        Some(e) => out.push_str(&format!(
            "Store: FAILING ({e}); new traffic is refused until it can write again\n"
        )),
    }
    if ctx.level >= PermissionLevel::Admin {
        let n = b.quarantined_count();
        if n > 0 {
            out.push_str(&format!(
                "Quarantine: {n} item(s) set aside after failing too often (`quarantine`)\n"
            ));
        }
    }
    if let Some((soft, hard)) = b.open_files() {
        let show = |n: &u64| {
            if *n == u64::MAX {
                "unlimited".to_owned()
            } else {
                n.to_string()
            }
        };
        out.push_str(&format!(
            "Open-files limit: {} (hard limit {})\n",
            show(&soft),
            show(&hard)
        ));
    }
    for (id, connector) in b.connectors() {
        let info = connector.info();
        out.push_str(&format!("{} ({id}):\n", info.display_name));
        let links = connector.status();
        if links.is_empty() && connector.bridge_client().is_none() {
            out.push_str("- no bridge-wide link; log in with your own account\n");
        }
        for (name, state) in links {
            out.push_str(&format!("- {name}: {}\n", state.as_str()));
        }
    }
    let logins = b.all_logins_of(ctx.sender);
    if logins.is_empty() {
        out.push_str("Your logins: none\n");
    } else {
        out.push_str("Your logins:\n");
        for (network, l) in logins {
            out.push_str(&format!(
                "- {network} {} ({}): {}\n",
                l.id,
                l.remote_name,
                l.client.state().as_str()
            ));
        }
    }
    Ok(out.trim_end().to_owned())
}

async fn quarantine(ctx: &Ctx<'_>, args: Vec<String>) -> Reply {
    let b = ctx.bridge;
    let items = b.quarantined()?;
    match args.as_slice() {
        [] => {
            if items.is_empty() {
                return Ok("The quarantine is empty: nothing failed too often.".into());
            }
            let mut out = format!(
                "{} item(s) set aside after failing too often (send one again with `quarantine retry <number>`, or all with `quarantine retry all`):\n",
                items.len()
            );
            for (seq, what, why) in items.iter().take(50) {
                out.push_str(&format!(
                    "- {seq}: {what}, {} tries: {}\n",
                    why.attempts, why.error
                ));
            }
            if items.len() > 50 {
                out.push_str(&format!("… and {} more\n", items.len() - 50));
            }
            Ok(out.trim_end().to_owned())
        }
        [retry, which] if retry.eq_ignore_ascii_case("retry") => {
            let seqs: Vec<u64> = if which.eq_ignore_ascii_case("all") {
                items.iter().map(|(seq, _, _)| *seq).collect()
            } else {
                match which.parse() {
                    Ok(seq) => vec![seq],
                    Err(_) => {
                        return Ok(format!(
                            "`{which}` is not an item number; `quarantine` lists them."
                        ));
                    }
                }
            };
            let mut sent = 0;
            for seq in &seqs {
                if b.release_quarantined(*seq).await? {
                    sent += 1;
                }
            }
            Ok(match (sent, seqs.len()) {
                (0, 0) => "The quarantine is empty: nothing to send again.".into(),
                (0, _) => format!("There is no item {which} in the quarantine; `quarantine` lists them."),
                (n, _) => format!("Sent {n} item(s) again, each behind what its portal received meanwhile."),
            })
        }
        _ => Ok("Usage: `quarantine` to list, `quarantine retry <number>` or `quarantine retry all` to send again.".into()),
    }
}

async fn whoami(ctx: &Ctx<'_>, _args: Vec<String>) -> Reply {
    let b = ctx.bridge;
    let management = b
        .management_room_of(ctx.sender)?
        .unwrap_or_else(|| "none (start a direct chat with the bot)".into());
    let logins: Vec<String> = b
        .all_logins_of(ctx.sender)
        .into_iter()
        .map(|(n, l)| format!("{n}:{} ({})", l.id, l.remote_name))
        .collect();
    Ok(format!(
        "You are {}\nPermission level: {:?}\nManagement room: {management}\nLogins: {}",
        ctx.sender,
        ctx.level,
        if logins.is_empty() {
            "none".into()
        } else {
            logins.join(", ")
        }
    ))
}
