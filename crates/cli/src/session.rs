//! What every command shares: talking to the relays (catching up, delivering,
//! retiring what an erasure left), choosing a relay, printing for people and for
//! programs, and saying what changed meanwhile. A leaf: it imports no command
//! module.

use std::time::Duration;

use backchannel_client::{Client, ClientError, LinkAnswer, Notice};
use backchannel_core::introduction::{IntroEvent, short_id};
use backchannel_core::store::MessageKind;
use backchannel_core::{Actor, ChannelId, ChannelSummary, Erasure, Event, Pending};
use backchannel_proto::addr::RelayAddr;
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::output;

/// Profile setting: the relay used for codes when `--relay` is not given.
pub(crate) const RELAY_SETTING: &str = "relay";

/// How long a command waits for relays.
pub(crate) const RELAY_LIMIT: Duration = Duration::from_secs(20);

pub(crate) fn relay_addr(text: &str) -> Result<RelayAddr, Failure> {
    text.parse::<RelayAddr>().map_err(|e| {
        Failure::new(format!("'{text}' is not a relay address: {e}"))
            .hint("a relay address looks like bcr://<fingerprint>@host:port; `backchannel relay address --data DIR` prints it")
    })
}

/// The relay given, or the profile's usual one (`init --relay`).
pub(crate) fn chosen_relay(client: &Client, given: Option<&str>) -> Result<RelayAddr, Failure> {
    let text = match given {
        Some(r) => r.to_owned(),
        None => client
            .store()
            .setting(RELAY_SETTING)?
            .ok_or_else(|| {
                Failure::new("which relay?").hint(
                    "pass --relay ADDR, or set your usual relay once with `backchannel init --relay ADDR`",
                )
            })?,
    };
    relay_addr(&text)
}

pub(crate) fn print(g: &Global, human: String, machine: serde_json::Value) {
    if g.json {
        println!("{machine}");
    } else {
        println!("{human}");
    }
}

/// Catches up with the relays, tolerating unreachable ones (what is local still
/// works; the person is told). Says which channels were erased meanwhile (burned
/// by a member, or past their end date) and returns their names.
pub(crate) async fn catch_up(g: &Global, client: &mut Client) -> Vec<String> {
    if let Err(e) = client.sync(RELAY_LIMIT).await {
        // A relay that answers but delivered less than it counted (another reader
        // of the profile took messages meanwhile) leaves nothing to say: what is
        // really missing is shown as waiting. Unreachable relays and unsent
        // messages are worth a word.
        let quiet = matches!(e, ClientError::Timeout(_))
            && client.unsent() == 0
            && client.relay_errors.is_empty();
        if !quiet {
            eprintln!("warning: {e}");
        }
    }
    let events = client.drain_events();
    let gone = report_changes(g, client, &events);
    if !gone.is_empty() {
        // The sync sent what the erasure left to send (the receipt of a burn).
        retire_erased(client).await;
    }
    gone
}

/// Waits until everything queued is on a relay; says so if it could not be.
pub(crate) async fn deliver(client: &mut Client) -> Result<(), Failure> {
    client.flush(RELAY_LIMIT).await.map_err(|e| match e {
        ClientError::Timeout(detail) => Failure::new(detail)
            .hint("check the relay address and your connection; queued messages are sent by the next command"),
        other => other.into(),
    })
}

/// After a channel was erased: deletes our mailboxes for it at their relays. A
/// relay that is down gets them next time; meanwhile no row names the channel.
pub(crate) async fn retire_erased(client: &mut Client) {
    if let Err(e) = client.retire_closed().await {
        eprintln!("warning: {e}");
    }
}

pub(crate) fn channel_by_id(
    client: &Client,
    id: ChannelId,
) -> Result<backchannel_core::ChannelSummary, Failure> {
    client
        .engine()
        .channel(id)
        .map_err(|_| Failure::new("the channel vanished"))
}

/// `3600` → `1h`, for people.
pub(crate) fn format_duration(secs: u64) -> String {
    for (unit, scale) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= scale && secs.is_multiple_of(scale) {
            return format!("{}{unit}", secs / scale);
        }
    }
    format!("{secs}s")
}

/// Who did it, for a sentence: "you" only ever for us (a member may call
/// themselves "you").
pub(crate) fn who(actor: &Actor) -> String {
    match actor {
        Actor::Us => "you".to_owned(),
        Actor::Member(name) if name.trim().eq_ignore_ascii_case("you") => {
            format!("the member called '{name}'")
        }
        Actor::Member(name) => name.clone(),
    }
}

/// One sentence on a channel erased from this device.
pub(crate) fn erasure_notice(name: &str, why: &Erasure) -> String {
    match why {
        Erasure::Burned { by: Actor::Us } => {
            format!(
                "'{name}' is burned: every member confirmed, and it is erased from this device."
            )
        }
        Erasure::Burned { by } => {
            let by = who(by);
            format!("'{name}' was burned by {by}: it is erased from this device.")
        }
        Erasure::Expired => {
            format!("'{name}' reached its end date: it is erased from this device.")
        }
        _ => format!("'{name}' is erased from this device."),
    }
}

fn channel_name(client: &Client, channel: &ChannelId) -> String {
    client
        .engine()
        .channel(channel)
        .map(|c| c.name)
        .unwrap_or_else(|_| "a channel no longer here".to_owned())
}

/// A notice of the client in words.
pub(crate) fn notice_text(client: &Client, notice: &Notice) -> String {
    match notice {
        Notice::JoinRequest { channel, id, who } => format!(
            "{who} asks to join {channel} (request {id}): compare safety numbers with \
             `backchannel requests {channel}`, then `backchannel admit {channel} {id}` or \
             `backchannel refuse {channel} {id}`"
        ),
        Notice::AutoAdmitted { channel, who } => {
            format!("{who} joined {channel} through an invite link (admitted without asking)")
        }
        Notice::AdmitFailed {
            channel,
            who,
            reason,
        } => format!("could not admit {who} to {channel}: {reason}"),
        Notice::InvalidRequest { reason } => format!("a request to join was not valid: {reason}"),
        Notice::Answered(LinkAnswer::Joined(channel)) => {
            format!("you were admitted to {}", channel_name(client, channel))
        }
        Notice::Answered(LinkAnswer::Refused) => "the inviter declined your request to join".into(),
        Notice::Answered(LinkAnswer::Failed(why)) => {
            format!("the invitation could not be used: {why}")
        }
        Notice::InviterMissing { channel } => format!(
            "warning: the person who made the invite link is not in '{}', the channel you were \
             admitted to; do not trust it until you compare safety numbers",
            channel_name(client, channel)
        ),
        _ => format!("{notice:?}"),
    }
}

/// Where an introduction has come, in words.
pub(crate) fn introduction_text(client: &Client, event: &IntroEvent) -> String {
    match event {
        IntroEvent::Asked {
            id,
            by,
            channel,
            peer,
            ..
        } => {
            let short = short_id(id);
            format!(
                "{by} wants to introduce you to {peer} (through '{}'): `backchannel accept \
                 {short}` gives you a channel with them, `backchannel decline {short}` says no",
                channel_name(client, channel)
            )
        }
        IntroEvent::Accepted { by, peer } => format!("{by} is introducing you to {peer}"),
        IntroEvent::Connected { by, peer, channel } => format!(
            "{by} introduced you to {peer}: your channel with them is '{}'",
            channel_name(client, channel)
        ),
        IntroEvent::Made { host, .. } => {
            format!("the introduction is made: {host} has a channel with the other")
        }
        IntroEvent::Declined { by, .. } => format!("{by} declined the introduction"),
        IntroEvent::Refused { from, reason } => {
            format!("an introduction from {from} failed: {reason}")
        }
        _ => format!("{event:?}"),
    }
}

/// One change to tell the person about, in words and for programs.
pub(crate) struct Change {
    /// The sentence.
    pub(crate) human: String,
    /// The JSON object; None for notices meant for people only.
    pub(crate) machine: Option<serde_json::Value>,
    /// The channel, when the change erased it.
    pub(crate) erased: Option<String>,
}

/// What changed about the person's channels, in words: notices (join requests,
/// answers), introductions, erasures (burned by a member, or past their end
/// date) and new rules.
pub(crate) fn describe_changes(client: &mut Client, events: &[Event]) -> Vec<Change> {
    let notice = |human: String| Change {
        human,
        machine: None,
        erased: None,
    };
    let mut changes: Vec<Change> = client
        .take_notices()
        .iter()
        .map(|n| notice(notice_text(client, n)))
        .collect();
    for event in events {
        match event {
            Event::Introduction(step) => changes.push(notice(introduction_text(client, step))),
            Event::Erased { name, why, .. } => {
                let (reason, by) = match why {
                    Erasure::Burned { by } => ("burned", Some(by.to_string())),
                    _ => ("expired", None),
                };
                changes.push(Change {
                    human: erasure_notice(name, why),
                    machine: Some(json!({"channel": name, "erased": reason, "by": by})),
                    erased: Some(name.clone()),
                });
            }
            Event::PolicyChanged {
                channel,
                by,
                disappearing_secs,
                expires_at,
            } => {
                let Ok(name) = client.engine().channel(channel).map(|c| c.name) else {
                    continue;
                };
                let timer = match disappearing_secs {
                    0 => "messages stay".to_owned(),
                    s => format!("messages disappear after {}", format_duration(*s)),
                };
                let end = match expires_at {
                    None => String::new(),
                    Some(t) => format!("; it ends {} UTC", output::short_time(*t)),
                };
                changes.push(Change {
                    human: format!("{} changed the rules of '{name}': {timer}{end}.", who(by)),
                    machine: Some(json!({
                        "channel": name,
                        "rules_changed_by": by.to_string(),
                        "disappearing_secs": disappearing_secs,
                        "expires_at": expires_at.map(output::rfc3339),
                    })),
                    erased: None,
                });
            }
            _ => {}
        }
    }
    changes
}

/// Tells the person what changed about their channels (notices and
/// introductions on standard error, for people only; erasures and new rules as
/// output). Returns the names of the channels erased.
pub(crate) fn report_changes(g: &Global, client: &mut Client, events: &[Event]) -> Vec<String> {
    let mut gone = Vec::new();
    for change in describe_changes(client, events) {
        match change.machine {
            None => eprintln!("{}", output::for_terminal(&change.human, "  ")),
            Some(machine) => print(g, change.human, machine),
        }
        gone.extend(change.erased);
    }
    gone
}

/// Parses `90s`, `10m`, `12h`, `7d`, `2w` (or a plain number of seconds) into
/// seconds; `off` and `0` mean none.
pub(crate) fn parse_duration(text: &str) -> Result<u64, Failure> {
    let bad = || {
        Failure::new(format!("'{text}' is not a duration"))
            .hint("write a number with a unit: 30s, 10m, 12h, 7d, 2w (or 'off')")
    };
    let text = text.trim();
    if text == "off" {
        return Ok(0);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(scale).ok_or_else(bad)?;
    // Relays keep a blob at most this long anyway; more makes no sense.
    if secs > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok(secs)
}

/// Prints what the channel still waits for, unless it is what `shown` was;
/// returns it.
pub(crate) fn show_pending(
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

/// The most a message read from standard input may have, in bytes (a text message's
/// limit is about 64 KiB).
const STDIN_LIMIT: u64 = 64 * 1024;

/// The message of `send`: the argument, or else standard input to its end.
pub(crate) fn message_text(text: Option<String>) -> Result<String, Failure> {
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

/// The channel setting that holds the position of the last message shown.
const READ_CURSOR: &str = "read-cursor";

/// Text messages of a channel after history position `after`, at most `limit`
/// of them, as the reader sees them (who sent each, and what we know of them),
/// and the last position looked at (`after` when there is nothing more).
pub(crate) fn messages_after(
    client: &Client,
    name: &str,
    after: u64,
    limit: usize,
) -> Result<(Vec<output::MessageView>, u64), Failure> {
    let summary = client.engine().channel(name)?;
    let mut views = Vec::new();
    let mut last = after;
    while views.len() < limit {
        let batch = client.engine().history(name, last, 500)?;
        if batch.is_empty() {
            break;
        }
        for m in &batch {
            if views.len() >= limit {
                break;
            }
            last = m.position;
            if !matches!(m.kind, MessageKind::Text | MessageKind::Attachment) {
                continue;
            }
            let introducer = client.introduced_by(&summary.id, &m.sender);
            let sender = if m.sender == summary.own_member {
                output::Sender::Own
            } else if summary.verified.contains(&m.sender) {
                output::Sender::Verified
            } else if let Some(by) = &introducer {
                output::Sender::Introduced(by)
            } else {
                output::Sender::Unverified
            };
            views.push(output::MessageView::new(name, m, sender));
        }
    }
    Ok((views, last))
}

/// The last history position of a channel, and how many text messages come
/// after `after` (in batches: a long history is never all in memory).
pub(crate) fn history_end(
    client: &Client,
    name: &str,
    after: u64,
) -> Result<(u64, usize), Failure> {
    let (mut last, mut texts) = (after, 0);
    loop {
        let batch = client.engine().history(name, last, 500)?;
        let Some(end) = batch.last() else {
            return Ok((last, texts));
        };
        last = end.position;
        texts += batch
            .iter()
            .filter(|m| matches!(m.kind, MessageKind::Text | MessageKind::Attachment))
            .count();
    }
}

/// A progress bar on standard error for `total` bytes, when it is a terminal
/// (and the output is for people); the callback the transfer reports to.
pub(crate) fn progress(
    g: &Global,
    what: &str,
    total: u64,
) -> (
    backchannel_client::attachment::Progress,
    Option<indicatif::ProgressBar>,
) {
    use std::io::IsTerminal as _;
    if g.json || !std::io::stderr().is_terminal() {
        return (std::sync::Arc::new(|_| {}), None);
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(output::for_terminal(what, ""));
    let shown = bar.clone();
    (std::sync::Arc::new(move |n| shown.inc(n)), Some(bar))
}

/// Fetches and saves the files that messages carry (not our own, not those saved
/// before), into `dir`. A file altered or withheld on the way raises an alert.
/// Files that failed before are tried again (this is the person asking).
pub(crate) async fn save_attachments(
    g: &Global,
    client: &Client,
    channel: &str,
    views: &mut [output::MessageView],
    dir: &std::path::Path,
) -> Result<(), Failure> {
    for i in plan_fetches(client, channel, views, true)? {
        let Some(view) = views.get_mut(i) else {
            continue;
        };
        let Some(descriptor) = view.descriptor.clone() else {
            continue;
        };
        let (report, bar) = progress(g, &descriptor.name, descriptor.size);
        let fetched = backchannel_client::attachment::download(&descriptor, dir, report).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        record_fetch(client, channel, view, fetched)?;
    }
    Ok(())
}

/// What became of a message's file, kept per message: `saved:PATH`, `refused`,
/// `failed:REASON`.
fn fetch_state_key(position: u64) -> String {
    format!("attachment-state:{position}")
}

/// Marks on each view what is known of its file already (saved, refused, failed
/// before) and returns the indexes of the files to fetch now: not our own, not
/// saved, from the sender's own relay, and (unless `retry`) not failed before. A
/// descriptor naming a relay other than the sender's is an alert, once.
pub(crate) fn plan_fetches(
    client: &Client,
    channel: &str,
    views: &mut [output::MessageView],
    retry: bool,
) -> Result<Vec<usize>, Failure> {
    let summary = client.engine().channel(channel)?;
    let store = client.store();
    let mut fetch = Vec::new();
    for (i, view) in views.iter_mut().enumerate() {
        let (Some(descriptor), Some(shown)) = (view.descriptor.as_ref(), view.attachment.as_mut())
        else {
            continue;
        };
        if view.you {
            continue;
        }
        let key = fetch_state_key(view.position);
        let state = store
            .channel_setting(&summary.id, &key)?
            .unwrap_or_default();
        if let Some(path) = state.strip_prefix("saved:")
            && std::path::Path::new(path).exists()
        {
            shown.saved_to = Some(path.to_owned());
            continue;
        }
        if state == "refused" {
            shown.error = Some(NOT_THEIR_RELAY.into());
            continue;
        }
        if let Some(reason) = state.strip_prefix("failed:")
            && !retry
        {
            shown.error = Some(reason.to_owned());
            continue;
        }
        // A file is fetched only from the relay its sender receives at: a
        // descriptor naming another would make us connect wherever a member says.
        let sender_relay = summary
            .members
            .iter()
            .find(|m| m.name == view.from)
            .map(|m| m.mailbox.relay.to_string());
        if sender_relay.as_deref() != Some(descriptor.relay.as_str()) {
            let text = format!(
                "{} sent a file ('{}') kept on a relay that is not theirs; it was not fetched",
                view.from, descriptor.name
            );
            add_alert(client, &summary.id, &text)?;
            store.set_channel_setting(&summary.id, &key, "refused")?;
            shown.error = Some(NOT_THEIR_RELAY.into());
            continue;
        }
        fetch.push(i);
    }
    Ok(fetch)
}

const NOT_THEIR_RELAY: &str = "kept on a relay that is not the sender's; not fetched";

fn add_alert(client: &Client, id: &ChannelId, text: &str) -> Result<(), Failure> {
    backchannel_core::store::EngineStore::add_alert(
        client.store(),
        id,
        backchannel_client::now(),
        "attachment_altered",
        text,
    )?;
    Ok(())
}

/// Records what a fetch came to: where the file is, or why not; tampering is an
/// alert (once per file).
pub(crate) fn record_fetch(
    client: &Client,
    channel: &str,
    view: &mut output::MessageView,
    fetched: Result<std::path::PathBuf, backchannel_client::attachment::AttachmentError>,
) -> Result<(), Failure> {
    let id = client.engine().channel_id(channel)?;
    let key = fetch_state_key(view.position);
    let before = client
        .store()
        .channel_setting(&id, &key)?
        .unwrap_or_default();
    let Some(shown) = view.attachment.as_mut() else {
        return Ok(());
    };
    match fetched {
        Ok(path) => {
            let path = path.display().to_string();
            client
                .store()
                .set_channel_setting(&id, &key, &format!("saved:{path}"))?;
            shown.saved_to = Some(path);
            shown.error = None;
        }
        Err(e) => {
            if e.is_tampering() && !before.starts_with("failed:") {
                let text = format!(
                    "the file '{}' from {} was altered or withheld on the way: {e}",
                    shown.name, view.from
                );
                add_alert(client, &id, &text)?;
            }
            let reason = e.to_string();
            client
                .store()
                .set_channel_setting(&id, &key, &format!("failed:{reason}"))?;
            shown.error = Some(reason);
        }
    }
    Ok(())
}

/// Where a channel's reader stopped (0: nothing read yet).
pub(crate) fn read_cursor(client: &Client, id: &ChannelId) -> Result<u64, Failure> {
    Ok(client
        .store()
        .channel_setting(id, READ_CURSOR)?
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Messages not read yet (from the first with `all`), at most `limit`, moving
/// the read cursor past them. Empty when there is no more.
pub(crate) fn take_unread(
    client: &Client,
    name: &str,
    from_start: bool,
    limit: usize,
) -> Result<Vec<output::MessageView>, Failure> {
    let id = client.engine().channel_id(name)?;
    let cursor = if from_start {
        0
    } else {
        read_cursor(client, &id)?
    };
    let (views, last) = messages_after(client, name, cursor, limit)?;
    client
        .store()
        .set_channel_setting(&id, READ_CURSOR, &last.to_string())?;
    Ok(views)
}

/// Prints (and marks shown) a channel's unshown alerts; returns how many.
pub(crate) fn show_alerts(g: &Global, client: &Client, name: &str) -> Result<usize, Failure> {
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

/// The relay for an invitation to a channel: the one given, else the relay of our
/// own mailbox in it.
pub(crate) fn invitation_relay(
    summary: &ChannelSummary,
    given: Option<&str>,
) -> Result<RelayAddr, Failure> {
    match given {
        Some(r) => relay_addr(r),
        None => summary
            .members
            .iter()
            .find(|m| m.is_self)
            .map(|m| m.mailbox.relay.clone())
            .ok_or_else(|| Failure::new("you are not a member of this channel")),
    }
}

/// Where a joiner's mailbox for the new channel goes: its usual relay if it has
/// one, else the inviter's.
pub(crate) fn joiner_mailbox_relay(
    client: &Client,
    inviters: &RelayAddr,
) -> Result<RelayAddr, Failure> {
    match client.store().setting(RELAY_SETTING)? {
        Some(usual) => relay_addr(&usual),
        None => Ok(inviters.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_who_calls_themselves_you_is_not_taken_for_us() {
        let by_member = Erasure::Burned {
            by: Actor::Member("you".into()),
        };
        assert_eq!(
            erasure_notice("ops", &by_member),
            "'ops' was burned by the member called 'you': it is erased from this device."
        );
        let by_alice = Erasure::Burned {
            by: Actor::Member("alice".into()),
        };
        assert_eq!(
            erasure_notice("ops", &by_alice),
            "'ops' was burned by alice: it is erased from this device."
        );
        let by_us = Erasure::Burned { by: Actor::Us };
        assert!(erasure_notice("ops", &by_us).contains("every member confirmed"));
    }
}
