//! `send` and `read`: messages, with what waits and what went wrong.

use std::time::Duration;

use backchannel_client::Client;
use backchannel_core::store::{ChannelStatus, MessageKind};
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::output;
use crate::profile::open_client;
use crate::session::{
    RELAY_LIMIT, catch_up, deliver, print, report_changes, retire_erased, show_alerts, show_pending,
};

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
