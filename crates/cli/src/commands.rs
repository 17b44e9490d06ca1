//! The profile, channel and message commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_client::Client;
use backchannel_core::mls::Suite;
use backchannel_core::store::{ChannelStatus, MessageKind};
use backchannel_core::{ChannelOptions, ChannelSummary, Event, Pending, Timestamp};
use backchannel_store::Store;
use serde_json::json;

use crate::output;
use crate::profile::{self, open_client, own_name};
use crate::session::{
    RELAY_LIMIT, RELAY_SETTING, catch_up, channel_by_id, chosen_relay, deliver, format_duration,
    parse_duration, print, relay_addr, report_changes, retire_erased,
};
use crate::{Failure, Global};

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

pub(crate) async fn init(
    g: &Global,
    name: Option<String>,
    relay: Option<String>,
) -> Result<(), Failure> {
    let relay = relay.as_deref().map(relay_addr).transpose()?;
    let home = profile::home(g)?;
    if Store::exists(&home) {
        return Err(
            Failure::new(format!("a profile exists already at {}", home.display()))
                .hint("use --home DIR (or BACKCHANNEL_HOME) for another profile"),
        );
    }
    let name = name
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "me".to_owned());
    backchannel_proto::member::check_name(&name)
        .map_err(|e| Failure::new(format!("invalid name: {e}")))?;
    let pass = profile::passphrase(true)?;
    let store = Store::create(&home, pass.as_bytes()).map_err(profile::open_failure)?;
    store.set_setting("name", &name)?;
    if let Some(relay) = &relay {
        store.set_setting(RELAY_SETTING, &relay.to_string())?;
    }
    print(
        g,
        format!("Profile created at {} (you are '{name}').", home.display()),
        json!({"home": home, "name": name}),
    );
    Ok(())
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

fn status_word(s: ChannelStatus) -> &'static str {
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
            Some(link) if crate::links::is_link(&link) => {
                crate::links::join_with_link(g, &link, name.as_deref(), wait).await
            }
            Some(code) => {
                crate::invite::join_with_code(g, &code, relay.as_deref(), name.as_deref()).await
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

/// The most a message read from standard input may have, in bytes (a text message's
/// limit is about 64 KiB).
const STDIN_LIMIT: u64 = 64 * 1024;

/// The message of `send`: the argument, or else standard input to its end.
fn message_text(text: Option<String>) -> Result<String, Failure> {
    use std::io::{IsTerminal as _, Read as _};
    if let Some(text) = text {
        return Ok(text);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Type the message, then Ctrl-D on a line of its own:");
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .take(STDIN_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::new(format!("cannot read the message from standard input: {e}")))?;
    if bytes.len() as u64 > STDIN_LIMIT {
        return Err(Failure::new(format!(
            "the message on standard input is longer than {STDIN_LIMIT} bytes"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::new("the message on standard input is not UTF-8 text"))?;
    // One trailing newline is how a line ends, not part of the message.
    let text = text.strip_suffix('\n').unwrap_or(&text).to_owned();
    if text.trim().is_empty() {
        return Err(Failure::new("the message is empty; nothing was sent"));
    }
    Ok(text)
}

pub(crate) async fn send(g: &Global, name: &str, text: Option<String>) -> Result<(), Failure> {
    let text = &message_text(text)?;
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    // Catch up first, so that we send in the newest epoch and never to someone the
    // channel has removed.
    catch_up(g, &mut client).await;
    client.send_text(name, text)?;
    deliver(&mut client).await?;
    let alerts = pending_alerts(&client, name)?;
    print(
        g,
        format!("Sent to '{name}'."),
        json!({"channel": name, "sent": true}),
    );
    if alerts > 0 {
        eprintln!(
            "note: {alerts} security alert(s) are waiting in '{name}'; see `backchannel read {name}`"
        );
    }
    Ok(())
}

fn pending_alerts(client: &Client, name: &str) -> Result<usize, Failure> {
    let id = client.engine().channel_id(name)?;
    Ok(client.store().unshown_alerts(&id)?.len())
}

/// The channel setting that holds the position of the last message shown.
const READ_CURSOR: &str = "read-cursor";

/// Prints what is new in a channel: messages after the read cursor and alerts not
/// yet shown. Returns how many alerts were shown.
fn show_new(g: &Global, client: &Client, name: &str, all: bool) -> Result<usize, Failure> {
    let id = client.engine().channel_id(name)?;
    let store = client.store();
    let cursor: u64 = if all {
        0
    } else {
        store
            .channel_setting(&id, READ_CURSOR)?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    let summary = client.engine().channel(name)?;
    let me = Some(summary.own_member);
    let mut last = cursor;
    loop {
        let batch = client.engine().history(name, last, 500)?;
        if batch.is_empty() {
            break;
        }
        for m in &batch {
            last = m.position;
            if m.kind == MessageKind::Text {
                let introducer = client.introduced_by(&id, &m.sender);
                let sender = if Some(m.sender) == me {
                    output::Sender::Own
                } else if summary.verified.contains(&m.sender) {
                    output::Sender::Verified
                } else if let Some(by) = &introducer {
                    output::Sender::Introduced(by)
                } else {
                    output::Sender::Unverified
                };
                println!("{}", output::message(name, m, sender, g.json));
            }
        }
    }
    store.set_channel_setting(&id, READ_CURSOR, &last.to_string())?;
    let alerts = show_alerts(g, client, name)?;
    if summary.status == ChannelStatus::Closed && !g.json && !all {
        println!("(You are no longer a member of '{name}'.)");
    }
    Ok(alerts)
}

pub(crate) async fn read(g: &Global, name: &str, follow: bool, all: bool) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    if catch_up(g, &mut client).await.iter().any(|n| n == name) {
        return Ok(());
    }
    let mut alerts = show_new(g, &client, name, all)?;
    let mut waiting = show_pending(g, &client, name, None)?;
    if follow {
        loop {
            tokio::select! {
                stepped = client.step(Duration::from_millis(500)) => {
                    if stepped? {
                        let events = client.drain_events();
                        if report_changes(g, &mut client, &events).iter().any(|n| n == name) {
                            // Send the receipt, and delete our mailboxes for it.
                            let _ = client.flush(RELAY_LIMIT).await;
                            retire_erased(&mut client).await;
                            break;
                        }
                        alerts += show_new(g, &client, name, false)?;
                    }
                    waiting = show_pending(g, &client, name, Some(&waiting))?;
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
    }
    if alerts > 0 {
        return Err(Failure::alert(format!(
            "{alerts} security alert(s) in '{name}' (shown above); do not trust what they concern"
        )));
    }
    Ok(())
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

/// Prints what the channel still waits for, unless it is what `shown` was;
/// returns it.
fn show_pending(
    g: &Global,
    client: &Client,
    name: &str,
    shown: Option<&Pending>,
) -> Result<Pending, Failure> {
    let pending = client.engine().pending(name)?;
    if shown != Some(&pending)
        && let Some(text) = output::pending(name, &pending, g.json)
    {
        if g.json {
            println!("{text}");
        } else {
            eprintln!("{text}");
        }
    }
    Ok(pending)
}

/// Prints (and marks shown) a channel's unshown alerts; returns how many.
fn show_alerts(g: &Global, client: &Client, name: &str) -> Result<usize, Failure> {
    let id = client.engine().channel_id(name)?;
    let store = client.store();
    let alerts = store.unshown_alerts(&id)?;
    for a in &alerts {
        if g.json {
            println!("{}", output::alert(name, a, true));
        } else {
            eprintln!("{}", output::alert(name, a, false));
        }
    }
    let ids: Vec<u64> = alerts.iter().map(|a| a.id).collect();
    store.mark_alerts_shown(&ids)?;
    Ok(alerts.len())
}
