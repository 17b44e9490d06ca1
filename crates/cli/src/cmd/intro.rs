//! `introduce`, `introductions`, `accept`, `decline`: introductions as the person
//! drives them (the protocol is the engine's).

use std::time::Duration;

use backchannel_client::IntroProgress;
use backchannel_core::introduction::short_id;
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::profile::open_client;
use crate::session::{catch_up, deliver, print};

pub(crate) async fn introduce(g: &Global, names: [&str; 4], wait: u64) -> Result<(), Failure> {
    let [channel, member, channel2, member2] = names;
    let mut client = open_client(g).await?;
    client.engine().channel(channel)?;
    client.engine().channel(channel2)?;
    catch_up(g, &mut client).await;
    let id = client.introduce(channel, member, channel2, member2)?;
    deliver(&mut client).await?;
    if !g.json {
        eprintln!(
            "Introducing {member} (of '{channel}') and {member2} (of '{channel2}'); waiting for \
             their clients to answer..."
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    let finished = |p| matches!(p, Some(IntroProgress::Done | IntroProgress::Declined));
    while !finished(client.introduction_progress(&id)) && std::time::Instant::now() < deadline {
        client.step(Duration::from_millis(250)).await?;
    }
    let events = client.drain_events();
    crate::session::report_changes(g, &mut client, &events);
    deliver(&mut client).await?;
    let progress = client.introduction_progress(&id);
    let (human, state) = match progress {
        Some(IntroProgress::Done) => (
            format!(
                "{member} and {member2} are introduced: they have a channel of their own, \
                 and each sees the other as introduced by you."
            ),
            "done",
        ),
        Some(IntroProgress::Declined) => ("The introduction was declined.".to_owned(), "declined"),
        _ => (
            format!(
                "The introduction is under way: {member2}, then {member}, are asked to accept; \
                 your client passes their answers on each time you run backchannel (for \
                 example `backchannel read`)."
            ),
            "under-way",
        ),
    };
    print(
        g,
        human,
        json!({"introduced": [member, member2], "state": state}),
    );
    Ok(())
}

pub(crate) async fn introductions(g: &Global) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    catch_up(g, &mut client).await;
    let waiting = client.pending_introductions();
    let rows = waiting.iter().map(|p| {
        let channel = client
            .engine()
            .channel(p.introducer.channel)
            .map(|c| c.name)
            .unwrap_or_default();
        (short_id(&p.id), p, channel)
    });
    if g.json {
        for (id, p, channel) in rows {
            println!(
                "{}",
                json!({"id": id, "by": p.introducer.name, "channel": channel, "peer": p.peer, "hosting": p.hosting})
            );
        }
        return Ok(());
    }
    if waiting.is_empty() {
        println!("No introduction is waiting for you.");
    }
    for (id, p, channel) in rows {
        println!(
            "{id}: {} (in '{channel}') introduces you to {}; you would {} the channel.",
            p.introducer.name,
            p.peer,
            if p.hosting { "make" } else { "join" }
        );
    }
    Ok(())
}

pub(crate) async fn answer_introduction(g: &Global, id: &str, yes: bool) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    catch_up(g, &mut client).await;
    let answered = if yes {
        client.accept_introduction(id).await
    } else {
        client.decline_introduction(id)
    };
    answered.map_err(|e| {
        Failure::new(e.to_string()).hint("`backchannel introductions` lists those waiting")
    })?;
    deliver(&mut client).await?;
    let events = client.drain_events();
    crate::session::report_changes(g, &mut client, &events);
    print(
        g,
        if yes {
            "Accepted; the introducer's client passes your answer on.".to_owned()
        } else {
            "Declined; the introducer is told.".to_owned()
        },
        json!({"introduction": id, "accepted": yes}),
    );
    Ok(())
}
