//! Ending things: disappearing messages, burning a channel, erasing the profile,
//! and the duress passphrase.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use backchannel_core::Event;
use backchannel_store::Store;
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::Global;
use crate::error::Failure;
use crate::profile::{self, open_client};
use crate::session::{catch_up, deliver, format_duration, parse_duration, print};

/// Environment variable holding the duress passphrase for `duress set`.
pub(crate) const DURESS_ENV: &str = "BACKCHANNEL_DURESS_PASSPHRASE";

pub(crate) async fn disappear(g: &Global, name: &str, duration: &str) -> Result<(), Failure> {
    let secs = parse_duration(duration)?;
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    client.set_disappearing(name, secs)?;
    deliver(&mut client).await?;
    let human = if secs == 0 {
        format!("Messages in '{name}' no longer disappear.")
    } else {
        format!(
            "Messages in '{name}' now disappear {} after they arrive, on every member's \
             device and at the relays.",
            format_duration(secs)
        )
    };
    print(
        g,
        human,
        json!({"channel": name, "disappearing_secs": secs}),
    );
    Ok(())
}

pub(crate) async fn burn(g: &Global, name: &str, wait: u64) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    if catch_up(g, &mut client).await.iter().any(|n| n == name) {
        return Ok(());
    }
    let summary = client.engine().channel(name)?;
    let total = summary.members.len();
    if summary.burn.is_none() {
        client.burn(name)?;
    }
    deliver(&mut client).await?;
    // Wait for the receipts.
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut confirmed: Vec<String> = Vec::new();
    let mut waiting: Vec<String> = Vec::new();
    let mut erased = false;
    if let Ok(c) = client.engine().channel(name)
        && let Some(b) = c.burn
    {
        confirmed = b.confirmed;
        waiting = b.waiting.into_iter().map(|(_, n)| n).collect();
    }
    loop {
        for event in client.drain_events() {
            match event {
                Event::BurnProgress {
                    confirmed: c,
                    waiting: w,
                    ..
                } => {
                    confirmed = c;
                    waiting = w;
                }
                Event::Erased { name: gone, .. } if gone == name => erased = true,
                _ => {}
            }
        }
        if erased || waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        client.step(Duration::from_millis(200)).await?;
    }
    if erased {
        // Our mailboxes for it go from the relays too.
        if let Err(e) = client.retire_closed().await {
            eprintln!("warning: {e}");
        }
    }
    let done = confirmed.len() + 1;
    let human = if waiting.is_empty() {
        format!(
            "Burned '{name}' on {done} of {total} members: every member's device has erased it, \
             and so has this one."
        )
    } else {
        format!(
            "Burned '{name}' on {done} of {total} members; not yet confirmed by {}. Their devices \
             erase it when they next connect; run `backchannel burn {name}` again to see who has \
             confirmed. (The messages are gone from this device; its keys stay until every member \
             has confirmed, or for 7 days.)",
            waiting.join(", ")
        )
    };
    print(
        g,
        human,
        json!({
            "channel": name,
            "members": total,
            "burned_on": done,
            "confirmed": confirmed,
            "waiting": waiting,
            "erased_here": erased,
        }),
    );
    Ok(())
}

/// Asks the person to type a word; false if they typed anything else (or nothing
/// could be read).
fn confirmed_by_typing(prompt: &str, word: &str) -> bool {
    eprint!("{prompt}");
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    line.trim() == word
}

pub(crate) async fn panic(g: &Global, yes: bool) -> Result<(), Failure> {
    let home = profile::home(g)?;
    if !Store::exists(&home) {
        return Err(Failure::new(format!(
            "there is no profile at {}",
            home.display()
        )));
    }
    if !yes
        && !confirmed_by_typing(
            &format!(
                "This erases the profile at {} for good: every channel, message and key. \
                 Type ERASE to go on: ",
                home.display()
            ),
            "ERASE",
        )
    {
        return Err(Failure::new("nothing was erased").hint("type ERASE, or pass --yes"));
    }
    Store::erase(&home).map_err(|e| {
        Failure::new(format!("the erasure did not finish: {e}"))
            .hint("run `backchannel panic --yes` again")
    })?;
    print(
        g,
        format!("The profile at {} is erased.", home.display()),
        json!({"erased": home}),
    );
    Ok(())
}

/// The duress passphrase, from the environment or a prompt (twice).
fn duress_passphrase() -> Result<Zeroizing<String>, Failure> {
    profile::secret(DURESS_ENV, "duress passphrase", true)
}

pub(crate) async fn duress(g: &Global, clear: bool) -> Result<(), Failure> {
    let store = profile::open_store(g)?;
    if clear {
        store.clear_duress().map_err(profile::open_failure)?;
        print(
            g,
            "The duress passphrase is removed.".into(),
            json!({"duress": false}),
        );
        return Ok(());
    }
    let duress = duress_passphrase()?;
    store
        .set_duress(duress.as_bytes())
        .map_err(profile::open_failure)?;
    print(
        g,
        "Duress passphrase set. Entered instead of your passphrase, it erases this profile \
         for good and answers \"wrong passphrase\"."
            .into(),
        json!({"duress": true}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("10m").unwrap(), 600);
        assert_eq!(parse_duration("12h").unwrap(), 43_200);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("2w").unwrap(), 1_209_600);
        assert_eq!(parse_duration("off").unwrap(), 0);
        for bad in ["", "h", "1y", "-1s", "1.5h", "99999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(3600), "1h");
        assert_eq!(format_duration(90), "90s");
        assert_eq!(format_duration(1_209_600), "2w");
    }
}
