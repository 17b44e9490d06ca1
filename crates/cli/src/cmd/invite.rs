//! `backchannel invite` and `backchannel join CODE`: joining with a code said aloud.

use std::time::Duration;

use backchannel_client::InviteError;
use backchannel_proto::code::InviteCode;
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::profile::{open_client, own_name};
use crate::session::{
    catch_up, chosen_relay, deliver, invitation_relay, joiner_mailbox_relay, print,
};

fn invite_failure(e: InviteError, inviter: bool) -> Failure {
    let suspicious = matches!(e, InviteError::WrongCode | InviteError::Abandoned);
    let message = e.to_string();
    let failure = if suspicious && inviter {
        // Someone may be guessing codes: a security alert.
        Failure::alert(message)
    } else {
        Failure::new(message)
    };
    if inviter {
        failure.hint("make a new code with `backchannel invite`")
    } else {
        failure.hint("check the code with the person who gave it, or ask for a new one")
    }
}

pub(crate) async fn invite(
    g: &Global,
    name: &str,
    relay: Option<&str>,
    wait: u64,
) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    client.engine().channel(name)?;
    catch_up(g, &mut client).await;
    let summary = client.engine().channel(name)?;
    if !summary.admin {
        return Err(Failure::new(format!(
            "only the administrator of '{name}' can invite to it"
        )));
    }
    let relay = invitation_relay(&summary, relay)?;
    let invitation = client
        .open_invitation(&relay)
        .await
        .map_err(|e| invite_failure(e, true))?;
    let code = invitation.code;
    let minutes = invitation.expires_in.as_secs().div_ceil(60);
    // The code is the first line, alone, for people and for scripts.
    print(
        g,
        code.to_string(),
        json!({"code": code.to_string(), "relay": relay.to_string(), "expires_in_secs": invitation.expires_in.as_secs()}),
    );
    if !g.json {
        eprintln!(
            "Say the code to the person joining; it works once, for {minutes} minutes. They run:\n  \
             backchannel join {code} --relay {relay}\nWaiting for them..."
        );
    }
    let joined = client
        .admit(name, invitation, Duration::from_secs(wait))
        .await
        .map_err(|e| invite_failure(e, true))?;
    deliver(&mut client).await?;
    print(
        g,
        format!(
            "{joined} joined '{name}'. Compare safety numbers with `backchannel verify {name} {joined}` \
             when you can."
        ),
        json!({"channel": name, "joined": joined}),
    );
    Ok(())
}

pub(crate) async fn join_with_code(
    g: &Global,
    code: &str,
    relay: Option<&str>,
    name: Option<&str>,
) -> Result<(), Failure> {
    let code: InviteCode = code.parse().map_err(|e| {
        Failure::new(format!("that code cannot be read: {e}"))
            .hint("a code looks like 17-ocean-violin")
    })?;
    let mut client = open_client(g).await?;
    let relay = chosen_relay(&client, relay)?;
    let mailbox_relay = joiner_mailbox_relay(&client, &relay)?;
    let me = own_name(&client)?;
    let (id, inviter) = client
        .join_with_code(&relay, &mailbox_relay, &code, &me, name)
        .await
        .map_err(|e| invite_failure(e, false))?;
    let summary = crate::session::channel_by_id(&client, id)?;
    // Our key package's mailbox was made on this relay; now tell the relays we are in.
    catch_up(g, &mut client).await;
    print(
        g,
        format!(
            "Joined '{}' ({} members, invited by {inviter}). Read with `backchannel read {}`.",
            summary.name,
            summary.members.len(),
            summary.name
        ),
        json!({
            "channel": summary.name,
            "invited_by": inviter,
            "members": summary.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}
