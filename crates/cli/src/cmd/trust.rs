//! `backchannel verify`: safety numbers, and marking members verified.

use backchannel_core::ChannelSummary;
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::output::{layout, qr};
use crate::profile::open_client;
use crate::session::{catch_up, print};

fn is_verified(summary: &ChannelSummary, member: &str) -> bool {
    summary
        .members
        .iter()
        .any(|m| m.name == member && summary.verified.contains(&m.member))
}

pub(crate) async fn verify(
    g: &Global,
    name: &str,
    member: Option<&str>,
    confirm: bool,
) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    let summary = client.engine().channel(name)?;
    let others: Vec<String> = match member {
        Some(m) => vec![m.to_owned()],
        None => summary
            .members
            .iter()
            .filter(|m| !m.is_self)
            .map(|m| m.name.clone())
            .collect(),
    };
    if confirm {
        let Some(member) = member else {
            return Err(Failure::new("say which member you verified")
                .hint(format!("backchannel verify {name} MEMBER --confirm")));
        };
        client.confirm_verified(name, member)?;
        print(
            g,
            format!(
                "{member} is verified in '{name}'. If their key ever changes, you will be told."
            ),
            json!({"channel": name, "member": member, "verified": true}),
        );
        return Ok(());
    }
    if others.is_empty() {
        print(
            g,
            format!("You are alone in '{name}'."),
            json!({"channel": name, "members": []}),
        );
        return Ok(());
    }
    for other in &others {
        let number = client.engine().safety_number(name, other)?;
        let verified = is_verified(&summary, other);
        if g.json {
            println!(
                "{}",
                json!({"channel": name, "member": other, "safety_number": number, "verified": verified})
            );
            continue;
        }
        println!(
            "Safety number with {other} in '{name}'{}:",
            if verified { " (verified)" } else { "" }
        );
        println!("{}", layout(&number));
        if member.is_some()
            && let Some(code) = qr(&number)
        {
            println!("{code}");
        }
    }
    if !g.json {
        println!(
            "Compare it with theirs, in person or on a call where you recognise each other. \
             If it is the same, run `backchannel verify {name} MEMBER --confirm`; if not, someone \
             is between you: do not trust the channel."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_three_lines_of_four() {
        let n = "00001 00002 00003 00004 00005 00006 00007 00008 00009 00010 00011 00012";
        assert_eq!(
            layout(n),
            "    00001 00002 00003 00004\n    00005 00006 00007 00008\n    00009 00010 00011 00012"
        );
        assert!(qr(n).is_some_and(|q| q.lines().count() > 10));
    }
}
