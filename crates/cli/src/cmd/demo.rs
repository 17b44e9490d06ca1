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

fn person(dir: &Path, name: &'static str) -> Result<Person, Failure> {
    let store = Store::create(&dir.join(name), b"demo passphrase")?;
    store.set_setting("name", name)?;
    Ok(Person {
        name,
        client: Client::open(store, ClientConfig::default())?,
        shown: 0,
    })
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
    for alert in p.client.store().unshown_alerts(&id)? {
        say(format!("{} sees a SECURITY ALERT: {}", p.name, alert.text));
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
        6,
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

    step(7, "What the relays saw.");
    relay_view(&dir.join("relay-a"), "relay A")?;
    relay_view(&dir.join("relay-b"), "relay B")?;
    say("the relays stored and forwarded fixed-size sealed blobs, acknowledged them only once on");
    say(
        "disk, and deleted them when read; they never held a key, a name, or the channel's membership",
    );

    step(
        8,
        "Done. The relays stop and the temporary directory is removed.",
    );
    drop((alice, bob, carol));
    relay_a.shutdown().await;
    relay_b.shutdown().await;
    println!(
        "\nThat was Backchannel. Run your own relay with `backchannel relay serve`; see the README."
    );
    Ok(())
}
