//! `channel` and the membership commands: create, list, show, add, key
//! packages and welcomes, remove, leave, update, status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_client::Client;
use backchannel_core::mls::Suite;
use backchannel_core::store::ChannelStatus;
use backchannel_core::{ChannelOptions, ChannelSummary, Event, Timestamp};
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::output;
use crate::profile::{open_client, own_name};
use crate::session::{
    catch_up, channel_by_id, chosen_relay, deliver, format_duration, parse_duration, print,
    show_alerts, show_pending,
};

fn suite(text: &str) -> Result<Suite, Failure> {
    text.parse::<Suite>().map_err(Failure::new)
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::new(format!("cannot read the {what} {}: {e}", path.display())))
}

fn write_file(path: &Path, bytes: &[u8], what: &str) -> Result<(), Failure> {
    std::fs::write(path, bytes).map_err(|e| {
        Failure::new(format!(
            "cannot write the {what} to {}: {e}",
            path.display()
        ))
    })
}

/// How a new channel ends: `--expires-in`, `--disappear`.
pub(crate) struct Ending<'a> {
    pub(crate) expires_in: Option<&'a str>,
    pub(crate) disappear: Option<&'a str>,
}

pub(crate) async fn channel_create(
    g: &Global,
    name: &str,
    relay: Option<&str>,
    suite_name: &str,
    ending: Ending<'_>,
) -> Result<(), Failure> {
    let suite = suite(suite_name)?;
    let expires_in = ending.expires_in.map(parse_duration).transpose()?;
    let disappearing_secs = ending
        .disappear
        .map(parse_duration)
        .transpose()?
        .unwrap_or(0);
    let expires_at = match expires_in {
        Some(0) => return Err(Failure::new("a channel cannot end as soon as it starts")),
        Some(secs) => Some(backchannel_client::now().plus_ms(secs.saturating_mul(1000))),
        None => None,
    };
    let options = ChannelOptions {
        suite,
        expires_at,
        disappearing_secs,
    };
    let mut client = open_client(g).await?;
    let relay = chosen_relay(&client, relay)?;
    let me = own_name(&client)?;
    client.create_channel(name, &me, options, &relay).await?;
    let suite_text = match suite {
        Suite::XWing => "X-Wing, post-quantum",
        Suite::Classic => "classic X25519",
    };
    let mut rules = String::new();
    if let Some(t) = expires_at {
        rules.push_str(&format!(
            " It ends {} UTC, and is then erased everywhere.",
            output::short_time(t)
        ));
    }
    if disappearing_secs > 0 {
        rules.push_str(&format!(
            " Messages disappear {} after they arrive.",
            format_duration(disappearing_secs)
        ));
    }
    print(
        g,
        format!(
            "Channel '{name}' created ({suite_text}); your mailbox for it is on {}.{rules}",
            relay.host
        ),
        json!({
            "channel": name,
            "suite": suite.name(),
            "relay": relay.to_string(),
            "expires_at": expires_at.map(output::rfc3339),
            "disappearing_secs": disappearing_secs,
        }),
    );
    Ok(())
}

pub(crate) async fn channel_list(g: &Global) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    // A request to join through a link may have been answered meanwhile; what an
    // earlier command left unsent (a burn receipt while a relay was down) goes.
    if !client.store().pending_join_mailboxes()?.is_empty()
        || !backchannel_core::store::EngineStore::outbox(client.store())?.is_empty()
    {
        catch_up(g, &mut client).await;
    }
    let channels = client.engine().channels();
    if g.json {
        for c in &channels {
            println!(
                "{}",
                json!({
                    "name": c.name,
                    "status": status_word(c.status),
                    "members": c.members.len(),
                    "suite": c.suite.name(),
                    "admin": c.admin,
                    "disappearing_secs": c.policy.as_ref().map(|p| p.disappearing_secs),
                    "expires_at": expires_at(c).map(output::rfc3339),
                    "burning": c.burn.is_some(),
                })
            );
        }
    } else if channels.is_empty() {
        println!(
            "No channels yet. Create one with `backchannel channel create NAME --relay ADDR`."
        );
    } else {
        for c in &channels {
            let admin = if c.admin { ", you administer it" } else { "" };
            let mut tags = Vec::new();
            if c.status != ChannelStatus::Active {
                tags.push(status_word(c.status).to_owned());
            }
            tags.extend(rules(c));
            let tags: String = tags.iter().map(|t| format!(" [{t}]")).collect();
            println!(
                "{}  ({} members, {}{admin}){tags}",
                c.name,
                c.members.len(),
                c.suite.name(),
            );
        }
    }
    Ok(())
}

fn expires_at(c: &ChannelSummary) -> Option<Timestamp> {
    c.policy
        .as_ref()
        .filter(|p| p.expires_at > 0)
        .map(|p| Timestamp(p.expires_at))
}

/// The channel's rules and burn, in words: "ends ...", "messages disappear after ...".
fn rules(c: &ChannelSummary) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(b) = &c.burn {
        out.push(format!(
            "burning: confirmed by {} of {} others",
            b.confirmed.len(),
            b.confirmed.len() + b.waiting.len()
        ));
    }
    if let Some(t) = expires_at(c) {
        out.push(format!("ends {} UTC", output::short_time(t)));
    }
    if let Some(p) = c.policy.as_ref().filter(|p| p.disappearing_secs > 0) {
        out.push(format!(
            "messages disappear after {}",
            format_duration(p.disappearing_secs)
        ));
    }
    out
}

pub(crate) fn status_word(s: ChannelStatus) -> &'static str {
    match s {
        ChannelStatus::Active => "active",
        ChannelStatus::Leaving => "leaving",
        ChannelStatus::Closed => "closed",
    }
}

pub(crate) async fn channel_show(g: &Global, name: &str) -> Result<(), Failure> {
    let client = open_client(g).await?;
    let c = client.engine().channel(name)?;
    if g.json {
        let members: Vec<_> = c
            .members
            .iter()
            .map(|m| json!({"name": m.name, "admin": m.admin, "you": m.is_self, "relay": m.mailbox.relay.authority()}))
            .collect();
        println!(
            "{}",
            json!({
                "name": c.name,
                "id": c.id.to_string(),
                "title": c.policy.as_ref().map(|p| p.title.clone()),
                "status": status_word(c.status),
                "suite": c.suite.name(),
                "epoch": c.epoch,
                "members": members,
                "disappearing_secs": c.policy.as_ref().map(|p| p.disappearing_secs),
                "expires_at": expires_at(&c).map(output::rfc3339),
                "burn": c.burn.as_ref().map(|b| json!({
                    "confirmed": b.confirmed,
                    "waiting": b.waiting.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
                })),
            })
        );
    } else {
        println!("Channel {}", c.name);
        if let Some(p) = &c.policy
            && p.title != c.name
        {
            println!("  title: {}", p.title);
        }
        println!(
            "  status: {}, ciphersuite: {}, epoch {}",
            status_word(c.status),
            c.suite.name(),
            c.epoch
        );
        for rule in rules(&c) {
            println!("  {rule}");
        }
        println!("  members:");
        for m in &c.members {
            let mut tags = Vec::new();
            if m.is_self {
                tags.push("you");
            }
            if m.admin {
                tags.push("administrator");
            }
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!(" ({})", tags.join(", "))
            };
            println!(
                "    {}{tags} — mailbox on {}",
                m.name,
                m.mailbox.relay.authority()
            );
        }
    }
    Ok(())
}

pub(crate) async fn channel_add(
    g: &Global,
    name: &str,
    key_package: &Path,
    welcome_out: &PathBuf,
) -> Result<(), Failure> {
    let kp = read_file(key_package, "key package")?;
    let mut client = open_client(g).await?;
    catch_up(g, &mut client).await;
    let before: Vec<String> = client
        .engine()
        .channel(name)?
        .members
        .into_iter()
        .map(|m| m.name)
        .collect();
    let welcome = client.add_members(name, &[&kp])?;
    write_file(welcome_out, &welcome, "welcome")?;
    let added: Vec<String> = client
        .engine()
        .channel(name)?
        .members
        .into_iter()
        .map(|m| m.name)
        .filter(|n| !before.contains(n))
        .collect();
    deliver(&mut client).await?;
    print(
        g,
        format!(
            "Added {} to '{name}'. Give them {} (for example on a USB stick); they run \
             `backchannel join --welcome FILE`.",
            added.join(", "),
            welcome_out.display()
        ),
        json!({"channel": name, "added": added, "welcome": welcome_out}),
    );
    Ok(())
}

pub(crate) async fn key_package(
    g: &Global,
    relay: Option<&str>,
    out: &Path,
    name: Option<String>,
    suite_name: &str,
) -> Result<(), Failure> {
    let suite = suite(suite_name)?;
    let mut client = open_client(g).await?;
    let relay = chosen_relay(&client, relay)?;
    let name = match name {
        Some(n) => n,
        None => own_name(&client)?,
    };
    let kp = client.key_package(&name, suite, &relay).await?;
    write_file(out, &kp, "key package")?;
    print(
        g,
        format!(
            "Key package written to {}. Give it to the channel's administrator, who runs \
             `backchannel channel add CHANNEL --key-package FILE --welcome-out WELCOME`.",
            out.display()
        ),
        json!({"key_package": out, "name": name, "suite": suite.name()}),
    );
    Ok(())
}

pub(crate) async fn join(
    g: &Global,
    code: Option<String>,
    welcome: Option<PathBuf>,
    relay: Option<String>,
    name: Option<String>,
    wait: u64,
) -> Result<(), Failure> {
    let Some(welcome) = welcome else {
        return match code {
            Some(link) if super::links::is_link(&link) => {
                super::links::join_with_link(g, &link, name.as_deref(), wait).await
            }
            Some(code) => {
                super::invite::join_with_code(g, &code, relay.as_deref(), name.as_deref()).await
            }
            None => Err(Failure::new("nothing to join with")
                .hint("pass the code you were given, or --welcome FILE")),
        };
    };
    let bytes = read_file(&welcome, "welcome")?;
    let mut client = open_client(g).await?;
    let id = client.join(name.as_deref(), &bytes)?;
    let summary = channel_by_id(&client, id)?;
    let by = joined_by(&mut client);
    print(
        g,
        format!(
            "Joined '{}' ({} members{}). Read with `backchannel read {}`.",
            summary.name,
            summary.members.len(),
            by.map(|b| format!(", added by {b}")).unwrap_or_default(),
            summary.name
        ),
        json!({"channel": summary.name, "members": summary.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>()}),
    );
    Ok(())
}

fn joined_by(client: &mut Client) -> Option<String> {
    let mut by = None;
    while let Some(event) = client.take_event() {
        if let Event::Joined { by: who, .. } = event {
            by = Some(who);
        }
    }
    by
}

pub(crate) async fn remove(g: &Global, name: &str, member: &str) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    client.remove_member(name, member)?;
    deliver(&mut client).await?;
    print(
        g,
        format!(
            "Removed {member} from '{name}'. New messages are sealed under keys {member} does not have."
        ),
        json!({"channel": name, "removed": member}),
    );
    Ok(())
}

pub(crate) async fn leave(g: &Global, name: &str) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    client.leave(name)?;
    deliver(&mut client).await?;
    print(
        g,
        format!("Leaving '{name}'; the administrator's client completes it."),
        json!({"channel": name, "leaving": true}),
    );
    Ok(())
}

pub(crate) async fn update(g: &Global, name: &str) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    client.self_update(name)?;
    deliver(&mut client).await?;
    print(
        g,
        format!("Your keys in '{name}' are being replaced."),
        json!({"channel": name, "updated": true}),
    );
    Ok(())
}

pub(crate) async fn status(g: &Global, name: &str, wait: u64) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    let asked = client.request_status(name).is_ok();
    deliver(&mut client).await?;
    if asked {
        client.idle(Duration::from_secs(wait)).await?;
        catch_up(g, &mut client).await;
    }
    let c = client.engine().channel(name)?;
    let others: Vec<_> = c.members.iter().filter(|m| !m.is_self).collect();
    if g.json {
        let peers: Vec<_> = others
            .iter()
            .map(|m| {
                let p = c.peers.iter().find(|p| p.member == m.member);
                json!({
                    "member": m.name,
                    "answered": p.is_some(),
                    "epoch": p.map(|p| p.epoch),
                    "agrees": p.map(|p| p.agrees),
                    "at": p.map(|p| output::rfc3339(p.at)),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"channel": name, "epoch": c.epoch, "members": peers})
        );
    } else {
        println!(
            "'{name}': you are at update {} ({} other members)",
            c.epoch,
            others.len()
        );
        for m in &others {
            match c.peers.iter().find(|p| p.member == m.member) {
                Some(p) if p.agrees && p.epoch == c.epoch => println!(
                    "  {}: same state as yours (as of {})",
                    m.name,
                    output::short_time(p.at)
                ),
                Some(p) if p.agrees => println!(
                    "  {}: at update {}, consistent with yours (as of {})",
                    m.name,
                    p.epoch,
                    output::short_time(p.at)
                ),
                Some(p) => println!(
                    "  {}: DISAGREES with your view at update {} (as of {})",
                    m.name,
                    p.epoch,
                    output::short_time(p.at)
                ),
                None => println!("  {}: no answer yet (offline?)", m.name),
            }
        }
    }
    let alerts = show_alerts(g, &client, name)?;
    show_pending(g, &client, name, None)?;
    if alerts > 0 {
        return Err(Failure::alert(format!(
            "{alerts} security alert(s) in '{name}' (shown above)"
        )));
    }
    Ok(())
}
