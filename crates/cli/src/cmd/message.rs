//! `send` and `read`: messages, with what waits and what went wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_client::Client;
use backchannel_core::store::ChannelStatus;
use serde_json::json;

use super::daemon::{Service, Work};
use crate::cli::Global;
use crate::error::Failure;
use crate::profile::open_client;
use crate::session::{
    RELAY_LIMIT, catch_up, deliver, message_text, parse_duration, print, progress, report_changes,
    retire_erased, save_attachments, show_alerts, show_pending, take_unread,
};

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

pub(crate) async fn send_file(
    g: &Global,
    name: &str,
    path: &Path,
    expires_in: &str,
) -> Result<(), Failure> {
    let expires_in = match parse_duration(expires_in)? {
        0 => {
            return Err(Failure::new("a file must stay on the relay for some time")
                .hint("give --expires-in a duration, like 12h or 7d"));
        }
        secs => Duration::from_secs(secs),
    };
    let size = std::fs::metadata(path)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?
        .len();
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    let shown = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (report, bar) = progress(g, &shown, size);
    let sent = client.send_attachment(name, path, expires_in, report).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let descriptor = sent?;
    deliver(&mut client).await?;
    let until = crate::output::rfc3339(backchannel_core::Timestamp(descriptor.expires_at));
    print(
        g,
        format!(
            "Sent {} ({}) to '{name}'; the relay keeps it until {} UTC.",
            crate::output::for_terminal(&descriptor.name, ""),
            crate::output::size(descriptor.size),
            until.get(..16).unwrap_or(&until).replace('T', " ")
        ),
        json!({
            "channel": name,
            "sent": true,
            "file": descriptor.name,
            "size": descriptor.size,
            "expires_at": until,
        }),
    );
    Ok(())
}

fn pending_alerts(client: &Client, name: &str) -> Result<usize, Failure> {
    let id = client.engine().channel_id(name)?;
    Ok(client.store().unshown_alerts(&id)?.len())
}

/// Prints what is new in a channel: messages after the read cursor (saving the
/// files they carry into `dir`) and alerts not yet shown. Returns how many alerts
/// were shown.
async fn show_new(
    g: &Global,
    client: &Client,
    name: &str,
    all: bool,
    dir: &Path,
) -> Result<usize, Failure> {
    let mut from_start = all;
    loop {
        let mut page = take_unread(client, name, from_start, 500)?;
        if page.is_empty() {
            break;
        }
        from_start = false;
        save_attachments(g, client, name, &mut page, dir).await?;
        for view in page {
            if g.json {
                println!("{}", serde_json::to_string(&view).unwrap_or_default());
            } else {
                println!("{}", view.line());
            }
        }
    }
    let alerts = show_alerts(g, client, name)?;
    let status = client.engine().channel(name)?.status;
    if status == ChannelStatus::Closed && !g.json && !all {
        println!("(You are no longer a member of '{name}'.)");
    }
    Ok(alerts)
}

/// The service's next work, or never without one.
async fn next_work(service: Option<&mut Service>) -> Option<Work> {
    match service {
        Some(service) => service.next().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn read(
    g: &Global,
    name: &str,
    follow: bool,
    all: bool,
    save_dir: Option<PathBuf>,
) -> Result<(), Failure> {
    let dir = crate::profile::save_dir(g, save_dir.as_deref())?;
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    if catch_up(g, &mut client).await.iter().any(|n| n == name) {
        return Ok(());
    }
    let mut alerts = show_new(g, &client, name, all, &dir).await?;
    let mut waiting = show_pending(g, &client, name, None)?;
    if follow {
        // While this runs it holds the profile; other commands (`send` in another
        // terminal) go through it, as through the daemon.
        let mut service = match Service::start(g, &client, None).await {
            Ok(service) => Some(service),
            Err(e) => {
                eprintln!(
                    "note: other commands on this profile wait until this stops ({})",
                    e.message
                );
                None
            }
        };
        loop {
            tokio::select! {
                stepped = client.step(Duration::from_millis(500)) => {
                    if stepped? {
                        let gone = match service.as_mut() {
                            Some(service) => service.after_step(g, &mut client),
                            None => {
                                let events = client.drain_events();
                                report_changes(g, &mut client, &events)
                            }
                        };
                        if gone.iter().any(|n| n == name) {
                            // Send the receipt, and delete our mailboxes for it.
                            let _ = client.flush(RELAY_LIMIT).await;
                            retire_erased(&mut client).await;
                            break;
                        }
                        alerts += show_new(g, &client, name, false, &dir).await?;
                    }
                    waiting = show_pending(g, &client, name, Some(&waiting))?;
                }
                work = next_work(service.as_mut()) => {
                    // None: the profile was erased (`panic`).
                    let (Some(work), Some(service)) = (work, service.as_mut()) else {
                        break;
                    };
                    if let Some(said) = service.handle(g, &mut client, work).await {
                        eprintln!("{}", crate::output::for_terminal(&said, "  "));
                    }
                    // A send through us shows here as it does in the sender's channel.
                    alerts += show_new(g, &client, name, false, &dir).await?;
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        if let Some(service) = service {
            let erased = service.erased;
            service.close();
            if erased {
                return Ok(());
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
