//! Invite links (`invite NAME --link`, `requests`, `admit`, `refuse`, and
//! `join LINK`) and introductions (`introduce`).

use std::time::Duration;

use backchannel_client::{Client, LinkAnswer};
use backchannel_proto::link::{InviteLink, LINK_PREFIX};
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::output;
use crate::output::{layout, qr};
use crate::profile::{open_client, own_name};
use crate::session::{catch_up, deliver, print};
use crate::session::{invitation_relay, joiner_mailbox_relay};

/// Whether `text` is meant as an invite link (rather than a code).
pub(crate) fn is_link(text: &str) -> bool {
    text.trim()
        .get(..LINK_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(LINK_PREFIX))
}

pub(crate) async fn invite_link(
    g: &Global,
    name: &str,
    relay: Option<&str>,
    auto_admit: bool,
    expires_in: &str,
) -> Result<(), Failure> {
    let valid_for = crate::session::parse_duration(expires_in)?;
    if valid_for == 0 {
        return Err(Failure::new("a link must be valid for some time").hint("--expires-in 7d"));
    }
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    let summary = client.engine().channel(name)?;
    let relay = invitation_relay(&summary, relay)?;
    let link = client
        .create_invite_link(name, &relay, auto_admit, Duration::from_secs(valid_for))
        .await?;
    deliver(&mut client).await?;
    // Upper case: QR codes hold it in their compact alphanumeric mode, and links
    // are read back in any case.
    let text = link.to_string().to_uppercase();
    print(
        g,
        text.clone(),
        json!({
            "link": text,
            "channel": name,
            "approval": !auto_admit,
            "expires_at": output::rfc3339(backchannel_core::Timestamp(link.expires_at)),
        }),
    );
    if !g.json {
        if let Some(code) = qr(&text) {
            println!("{code}");
        }
        let then = if auto_admit {
            "Whoever uses it first is admitted without asking: keep it to the one person it is for."
                .to_owned()
        } else {
            format!(
                "When they ask to join, compare safety numbers (`backchannel requests {name}`), then \
                 `backchannel admit {name} ID`."
            )
        };
        eprintln!(
            "Give the link to the person joining (a chat, the QR code, paper); it admits one person \
             and takes requests until {} UTC. They run:\n  backchannel join LINK\n{then}",
            output::short_time(backchannel_core::Timestamp(link.expires_at))
        );
    }
    Ok(())
}

pub(crate) async fn requests(g: &Global, name: Option<&str>) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    if let Some(name) = name {
        client.engine().channel(name)?;
    }
    catch_up(g, &mut client).await;
    let requests = client.join_requests(name)?;
    if g.json {
        for r in &requests {
            println!(
                "{}",
                json!({
                    "id": r.id,
                    "channel": r.channel,
                    "name": r.name,
                    "safety_number": r.safety_number,
                    "received_at": output::rfc3339(r.received_at),
                })
            );
        }
        return Ok(());
    }
    if requests.is_empty() {
        println!("No one is waiting to join.");
        return Ok(());
    }
    for r in &requests {
        println!(
            "Request {}: {} asks to join '{}' ({}). Safety number:\n{}",
            r.id,
            r.name,
            r.channel,
            output::short_time(r.received_at),
            layout(&r.safety_number)
        );
    }
    eprintln!(
        "Ask the person to read you the safety number `backchannel join` showed them; admit only if \
         it is the same: `backchannel admit CHANNEL ID` (or `backchannel refuse CHANNEL ID`)."
    );
    Ok(())
}

/// The request `id`, checked to be for channel `name`.
fn request_of(client: &Client, name: &str, id: u64) -> Result<(), Failure> {
    let requests = client.join_requests(Some(name))?;
    if requests.iter().any(|r| r.id == id) {
        return Ok(());
    }
    Err(
        Failure::new(format!("there is no request {id} to join '{name}'"))
            .hint(format!("see `backchannel requests {name}`")),
    )
}

pub(crate) async fn admit(g: &Global, name: &str, id: u64) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    request_of(&client, name, id)?;
    let joined = client.admit_request(id)?;
    deliver(&mut client).await?;
    print(
        g,
        format!("{joined} is admitted to '{name}'."),
        json!({"channel": name, "admitted": joined}),
    );
    Ok(())
}

pub(crate) async fn refuse(g: &Global, name: &str, id: u64) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    request_of(&client, name, id)?;
    client.refuse_request(id)?;
    deliver(&mut client).await?;
    print(
        g,
        format!("Request {id} to join '{name}' is refused; the person is told."),
        json!({"channel": name, "refused": id}),
    );
    Ok(())
}

pub(crate) async fn join_with_link(
    g: &Global,
    text: &str,
    name: Option<&str>,
    wait: u64,
) -> Result<(), Failure> {
    let link: InviteLink = text.parse().map_err(|e| {
        Failure::new(format!("that invite link cannot be read: {e}"))
            .hint("copy the whole link, from BCJ1 to its end")
    })?;
    let mut client = open_client(g).await?;
    let mailbox_relay = joiner_mailbox_relay(&client, &link.relay)?;
    let me = own_name(&client)?;
    let request = client
        .request_to_join(&link, &me, name, &mailbox_relay)
        .await?;
    deliver(&mut client).await?;
    if client.relay_errors.iter().any(|e| e.contains("refused")) {
        return Err(Failure::new(
            "the inviter's relay no longer takes requests for this link: it was used or has expired",
        )
        .hint("ask for a new link"));
    }
    if g.json {
        println!(
            "{}",
            json!({"requested": true, "safety_number": request.safety_number})
        );
    } else {
        println!(
            "Your request to join is sent. Safety number with the inviter:\n{}",
            layout(&request.safety_number)
        );
        eprintln!(
            "Read it to the person who gave you the link: they admit you only if theirs is the same."
        );
    }
    let answer = client
        .wait_for_answer(&request.answer_mailbox, Duration::from_secs(wait))
        .await?;
    let events = client.drain_events();
    crate::session::report_changes(g, &mut client, &events);
    match answer {
        Some(LinkAnswer::Joined(id)) => {
            let summary = crate::session::channel_by_id(&client, id)?;
            catch_up(g, &mut client).await;
            print(
                g,
                format!(
                    "Joined '{}' ({} members). Read with `backchannel read {}`.",
                    summary.name,
                    summary.members.len(),
                    summary.name
                ),
                json!({
                    "channel": summary.name,
                    "members": summary.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                }),
            );
            Ok(())
        }
        Some(LinkAnswer::Refused) => Err(Failure::new("the inviter declined your request to join")),
        Some(LinkAnswer::Failed(why)) => Err(Failure::new(format!(
            "the invitation could not be used: {why}"
        ))),
        None => {
            print(
                g,
                "No answer yet: the inviter decides when they are next online. You join when their \
                 answer arrives, at your next `backchannel` command (or `backchannel channel list`)."
                    .into(),
                json!({"pending": true}),
            );
            Ok(())
        }
    }
}
