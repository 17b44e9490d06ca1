//! `backchannel demo`: the whole story, end to end, on two embedded relays.
//!
//! Everything is real: two relays listening on loopback over TLS, three encrypted
//! profiles on disk, MLS with the X-Wing post-quantum suite. It all lives in a
//! temporary directory that is removed at the end, and nothing keeps running.

use std::path::Path;
use std::time::Duration;

use backchannel_client::{Client, ClientConfig};
use backchannel_core::mls::Suite;
use backchannel_core::store::{ChannelStatus, MessageKind};
use backchannel_relay::{RelayConfig, RunningRelay};
use backchannel_store::Store;

use crate::cli::Global;
use crate::error::Failure;

const CHANNEL: &str = "negotiation";
const LIMIT: Duration = Duration::from_secs(20);

struct Person {
    name: &'static str,
    client: Client,
    shown: u64,
}

fn step(n: u32, title: &str) {
    println!("\n{n}. {title}");
}

fn say(text: impl AsRef<str>) {
    println!("   {}", text.as_ref());
}

async fn start_relay(dir: &Path) -> Result<RunningRelay, Failure> {
    let config = RelayConfig::new(([127, 0, 0, 1], 0).into(), dir.to_owned());
    backchannel_relay::start(config)
        .await
        .map_err(|e| Failure::new(format!("cannot start an embedded relay: {e}")))
}

/// How long the demo's clients wait for a missing message before it is an alert
/// (a real client waits two minutes).
const DEMO_GAP_GRACE: Duration = Duration::from_secs(3);

const PASSPHRASE: &[u8] = b"demo passphrase";

fn demo_config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.engine.gap_grace_ms = DEMO_GAP_GRACE.as_millis() as u64;
    config
}

fn person(dir: &Path, name: &'static str) -> Result<Person, Failure> {
    let store = Store::create(&dir.join(name), PASSPHRASE)?;
    store.set_setting("name", name)?;
    Ok(Person {
        name,
        client: Client::open(store, demo_config())?,
        shown: 0,
    })
}

/// The person's device comes back online (their profile opened again).
fn back_online(dir: &Path, name: &'static str, shown: u64) -> Result<Person, Failure> {
    let store = Store::open(&dir.join(name), PASSPHRASE)
        .map_err(|e| Failure::new(format!("cannot reopen {name}'s profile: {e}")))?;
    Ok(Person {
        name,
        client: Client::open(store, demo_config())?,
        shown,
    })
}

/// The relay's newest record id (what an operator sees).
fn newest_record(relay_dir: &Path) -> Result<i64, Failure> {
    let db = rusqlite::Connection::open(relay_dir.join(backchannel_relay::DATABASE_FILE))?;
    Ok(
        db.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
            r.get(0)
        })?,
    )
}

/// The operator deletes (or, with `alter`, scrambles) every record stored since
/// `after`; returns how many.
fn tamper(relay_dir: &Path, after: i64, alter: bool) -> Result<usize, Failure> {
    let db = rusqlite::Connection::open(relay_dir.join(backchannel_relay::DATABASE_FILE))?;
    if alter {
        return Ok(db.execute(
            "UPDATE messages SET blob = randomblob(length(blob)) WHERE id > ?1",
            [after],
        )?);
    }
    // A careful operator also corrects the mailbox's count, so that the relay's
    // own numbers give nothing away.
    db.execute(
        "UPDATE mailboxes SET count = count - (SELECT count(*) FROM messages m
            WHERE m.mailbox = mailboxes.key AND m.id > ?1)",
        [after],
    )?;
    Ok(db.execute("DELETE FROM messages WHERE id > ?1", [after])?)
}

/// Syncs a person and prints what they newly see in the channel.
async fn read(p: &mut Person) -> Result<Vec<String>, Failure> {
    p.client.sync(LIMIT).await?;
    while p.client.take_event().is_some() {}
    let Ok(summary) = p.client.engine().channel(CHANNEL) else {
        return Ok(Vec::new());
    };
    let me = Some(summary.own_member);
    let mut seen = Vec::new();
    for m in p.client.engine().history(CHANNEL, p.shown, usize::MAX)? {
        p.shown = m.position;
        if m.kind == MessageKind::Text && Some(m.sender) != me {
            let text = String::from_utf8_lossy(&m.body).into_owned();
            say(format!("{} reads  {}: \"{text}\"", p.name, m.sender_name));
            seen.push(text);
        }
    }
    let id = p.client.engine().channel_id(CHANNEL)?;
    let alerts = p.client.store().unshown_alerts(&id)?;
    for alert in &alerts {
        say(format!("{} sees a SECURITY ALERT: {}", p.name, alert.text));
    }
    let ids: Vec<u64> = alerts.iter().map(|a| a.id).collect();
    p.client.store().mark_alerts_shown(&ids)?;
    if let Some(waiting) =
        crate::output::pending(CHANNEL, &p.client.engine().pending(CHANNEL)?, false)
    {
        for line in waiting.lines() {
            say(format!("{} sees: {line}", p.name));
        }
    }
    Ok(seen)
}

async fn send(p: &mut Person, text: &str) -> Result<(), Failure> {
    p.client.sync(LIMIT).await?;
    p.client.send_text(CHANNEL, text)?;
    p.client.flush(LIMIT).await?;
    say(format!("{} sends \"{text}\"", p.name));
    Ok(())
}

/// What a relay holds right now, read straight from its database.
fn relay_view(relay_dir: &Path, label: &str) -> Result<(), Failure> {
    let db = rusqlite::Connection::open_with_flags(
        relay_dir.join(backchannel_relay::DATABASE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mailboxes: i64 = db.query_row("SELECT count(*) FROM mailboxes", [], |r| r.get(0))?;
    let mut stmt = db.prepare(
        "SELECT mailbox, length(blob), hex(substr(blob, 1, 12)) FROM messages ORDER BY id",
    )?;
    let rows: Vec<(i64, i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    say(format!(
        "{label}: {mailboxes} mailboxes, {} records waiting",
        rows.len()
    ));
    for (mailbox, len, head) in rows.iter().take(6) {
        say(format!(
            "   mailbox #{mailbox}: {len} bytes, begins {}…",
            head.to_lowercase()
        ));
    }
    let sizes: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.1).collect();
    if !rows.is_empty() {
        say(format!(
            "   every record is {} bytes of ciphertext: no names, no channel, no sender, nothing linking one mailbox to another",
            sizes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("/")
        ));
    }
    Ok(())
}

pub(crate) async fn run(_g: &Global) -> Result<(), Failure> {
    let tmp = tempfile::tempdir()?;
    let result = story(tmp.path()).await;
    drop(tmp);
    result
}

async fn story(dir: &Path) -> Result<(), Failure> {
    println!("Backchannel demo: three people, two relays run by different operators, one channel.");
    println!(
        "Everything here is real: TLS on loopback sockets, encrypted profiles on disk, MLS with"
    );
    println!(
        "the X-Wing post-quantum suite. It all happens in a temporary directory, removed at the end."
    );

    step(
        1,
        "Two relays start. A relay address names the relay's certificate, so clients pin it.",
    );
    let relay_a = start_relay(&dir.join("relay-a")).await?;
    let relay_b = start_relay(&dir.join("relay-b")).await?;
    say(format!("relay A: {}", relay_a.address));
    say(format!("relay B: {}", relay_b.address));

    step(
        2,
        "Alice, Bob and Carol each create a profile (encrypted with their passphrase).",
    );
    let mut alice = person(dir, "alice")?;
    let mut bob = person(dir, "bob")?;
    let mut carol = person(dir, "carol")?;
    say("alice and carol will receive through relay A, bob through relay B");

    step(
        3,
        "Alice creates the channel; her mailbox for it is on relay A.",
    );
    alice
        .client
        .create_channel(CHANNEL, "alice", Suite::XWing.into(), &relay_a.address)
        .await?;
    say(format!(
        "'{CHANNEL}' exists, with a signing key made for this channel alone"
    ));

    step(
        4,
        "Bob and Carol join. Each makes a key package; Alice adds them; each joins from the welcome.",
    );
    let bob_kp = bob
        .client
        .key_package("bob", Suite::XWing, &relay_b.address)
        .await?;
    let carol_kp = carol
        .client
        .key_package("carol", Suite::XWing, &relay_a.address)
        .await?;
    say(format!(
        "key packages: bob's {} bytes, carol's {} bytes (they travel out of band: a file, a QR code)",
        bob_kp.len(),
        carol_kp.len()
    ));
    let welcome = alice.client.add_members(CHANNEL, &[&bob_kp, &carol_kp])?;
    alice.client.flush(LIMIT).await?;
    bob.client.join(Some(CHANNEL), &welcome)?;
    carol.client.join(Some(CHANNEL), &welcome)?;
    let members: Vec<String> = alice
        .client
        .engine()
        .channel(CHANNEL)?
        .members
        .into_iter()
        .map(|m| {
            format!(
                "{} (mailbox on {})",
                m.name,
                if m.mailbox.relay == relay_a.address {
                    "A"
                } else {
                    "B"
                }
            )
        })
        .collect();
    say(format!("members: {}", members.join(", ")));

    step(
        5,
        "Dana joins by a code Alice reads to her on the phone, then they compare safety numbers.",
    );
    let mut dana = person(dir, "dana")?;
    let invitation = alice.client.open_invitation(&relay_a.address).await?;
    let code = invitation.code;
    say(format!(
        "alice's code: {code} (it works once, for ten minutes)"
    ));
    let (admitted, joined) = tokio::join!(
        alice.client.admit(CHANNEL, invitation, LIMIT),
        dana.client.join_with_code(
            &relay_a.address,
            &relay_a.address,
            &code,
            "dana",
            Some(CHANNEL)
        ),
    );
    let admitted = admitted?;
    joined?;
    alice.client.flush(LIMIT).await?;
    say(format!(
        "{admitted} is in: a wrong code would have failed on both sides, and been burnt"
    ));
    dana.client.sync(LIMIT).await?;
    let alice_sees = alice.client.engine().safety_number(CHANNEL, "dana")?;
    let dana_sees = dana.client.engine().safety_number(CHANNEL, "alice")?;
    say(format!("alice's screen: {alice_sees}"));
    say(format!("dana's screen:  {dana_sees}"));
    if alice_sees != dana_sees {
        return Err(Failure::alert(
            "the safety numbers differ: someone is in between",
        ));
    }
    alice.client.confirm_verified(CHANNEL, "dana")?;
    dana.client.confirm_verified(CHANNEL, "alice")?;
    say("the same: nobody is in between; each marks the other verified");
    read(&mut dana).await?;

    step(
        6,
        "They talk. Every message is sealed once per recipient and sent to that recipient's relay.",
    );
    send(&mut alice, "Opening position: 120, delivery in March.").await?;
    send(&mut bob, "We can do 100, delivery in April.").await?;
    relay_view(&dir.join("relay-a"), "relay A now holds")?;
    read(&mut bob).await?;
    read(&mut carol).await?;
    read(&mut alice).await?;
    send(&mut carol, "Counsel agrees with 110 and March.").await?;
    read(&mut alice).await?;
    read(&mut bob).await?;

    step(
        7,
        "Alice removes Carol. The channel moves to new keys that Carol never receives.",
    );
    alice.client.sync(LIMIT).await?;
    alice.client.remove_member(CHANNEL, "carol")?;
    alice.client.flush(LIMIT).await?;
    read(&mut bob).await?;
    send(&mut bob, "Between us: we would accept 112.").await?;
    let seen = read(&mut carol).await?;
    let closed = carol.client.engine().channel(CHANNEL)?.status == ChannelStatus::Closed;
    say(format!(
        "carol read {} new message(s); her client says she is {}",
        seen.len(),
        if closed {
            "no longer a member"
        } else {
            "still a member (!)"
        }
    ));
    if !seen.is_empty() || !closed {
        return Err(Failure::alert(
            "the removed member could still read: this must never happen",
        ));
    }
    read(&mut alice).await?;

    step(
        8,
        "Relay B's operator turns hostile: drops one stored message to Bob, alters another.",
    );
    let relay_b_dir = dir.join("relay-b");
    let bob_shown = bob.shown;
    drop(bob);
    say("bob's laptop is closed: what comes for him waits on relay B");
    let before = newest_record(&relay_b_dir)?;
    send(&mut alice, "Final offer: 111, delivery in March.").await?;
    let dropped = tamper(&relay_b_dir, before, false)?;
    say(format!(
        "the operator deletes what was stored for bob ({dropped} record(s))"
    ));
    send(&mut alice, "Please confirm by noon.").await?;
    let kept = newest_record(&relay_b_dir)?;
    send(&mut alice, "Signed copy follows.").await?;
    let altered = tamper(&relay_b_dir, kept, true)?;
    say(format!("and scrambles the next ({altered} record(s))"));
    send(&mut alice, "Call me when you can.").await?;
    let mut bob = back_online(dir, "bob", bob_shown)?;
    say("bob opens his laptop");
    read(&mut bob).await?;
    say(format!(
        "bob waits {} seconds for the missing message (two minutes outside the demo)...",
        DEMO_GAP_GRACE.as_secs()
    ));
    bob.client
        .idle(DEMO_GAP_GRACE + Duration::from_secs(1))
        .await?;
    read(&mut bob).await?;
    say("(these alerts are expected: the demo attacked its own relay)");

    step(9, "What the relays saw.");
    relay_view(&dir.join("relay-a"), "relay A")?;
    relay_view(&dir.join("relay-b"), "relay B")?;
    say("the relays stored and forwarded fixed-size sealed blobs, acknowledged them only once on");
    say(
        "disk, and deleted them when read; they never held a key, a name, or the channel's membership",
    );

    step(
        10,
        "Alice burns the channel: every member's device erases it and confirms.",
    );
    alice.client.sync(LIMIT).await?;
    alice.client.burn(CHANNEL)?;
    alice.client.flush(LIMIT).await?;
    for p in [&mut bob, &mut dana] {
        p.client.sync(LIMIT).await?;
        let gone = p.client.engine().channel(CHANNEL).is_err();
        p.client.flush(LIMIT).await?;
        say(format!(
            "{}'s device {}",
            p.name,
            if gone {
                "erased it and sent its receipt"
            } else {
                "still has it (!)"
            }
        ));
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut erased = false;
    while !erased && tokio::time::Instant::now() < deadline {
        alice.client.step(Duration::from_millis(200)).await?;
        for event in alice.client.drain_events() {
            match event {
                backchannel_core::Event::BurnProgress { confirmed, .. }
                    if !confirmed.is_empty() =>
                {
                    say(format!("alice has receipts from: {}", confirmed.join(", ")));
                }
                backchannel_core::Event::Erased { .. } => erased = true,
                _ => {}
            }
        }
    }
    if !erased {
        return Err(Failure::new("the burn did not complete in time"));
    }
    say("every member confirmed; alice's device erased it too");
    for p in [&mut alice, &mut bob, &mut dana] {
        p.client.retire_closed().await?;
    }
    relay_view(&dir.join("relay-a"), "relay A after the burn")?;

    step(
        11,
        "Done. The relays stop and the temporary directory is removed.",
    );
    drop((alice, bob, carol, dana));
    relay_a.shutdown().await;
    relay_b.shutdown().await;
    println!(
        "\nThat was Backchannel. Run your own relay with `backchannel relay serve`; see the README."
    );
    Ok(())
}
