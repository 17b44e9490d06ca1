//! Joining with a one-time code said aloud.
//!
//! The inviter opens a rendezvous at a relay, which gives it a short number; the
//! code is that number and two secret words. The joiner joins the rendezvous and
//! the two run SPAKE2 on the code through the relay:
//!
//! ```text
//! joiner  -> inviter  Pake
//! inviter -> joiner   Pake, Confirm, sealed Offer (channel, suite)
//! joiner  -> inviter  Confirm, sealed key package (its mailbox inside)
//! inviter -> joiner   sealed welcome
//! joiner  -> inviter  sealed "joined" (once the welcome is applied)
//! ```
//!
//! The inviter adds the joiner (an MLS commit) before the welcome exists; if the
//! joiner does not confirm, it removes the joiner again, so a failed transfer never
//! leaves a member nobody holds the keys of.
//!
//! Each side checks the other's confirmation before it trusts anything sealed. A
//! failed check ends the exchange on both sides; the relay never lets anyone join
//! that rendezvous again, so the code is burnt. The relay sees only the number,
//! PAKE messages and ciphertext.

use std::time::{Duration, Instant};

use backchannel_core::ChannelId;
use backchannel_core::invite::{Pake, Role, Session};
use backchannel_core::mls::Suite;
use backchannel_proto::addr::RelayAddr;
use backchannel_proto::code::InviteCode;
use backchannel_proto::frame::{ErrorCode, RendezvousEvent};
use backchannel_proto::rendezvous::{AbortReason, Offer, Reassembly, Wire};
use rand::RngCore as _;
use tokio::sync::mpsc;

use crate::driver::{Client, ClientError};
use crate::relay::{RelayClient, RelayClientError};

/// What the joiner seals once it has applied the welcome.
const JOINED: &[u8] = b"backchannel/v1/joined";

/// How long a side that left may take to tell us why (its words are on their way).
const GONE_WAIT: Duration = Duration::from_secs(5);

/// How long each step of the exchange may take once both sides are there.
const STEP: Duration = Duration::from_secs(60);

/// Why an invitation did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// The two sides have different codes.
    #[error(
        "the code did not match: the invitation is cancelled and the code can no longer be \
         used. If the code was not simply mistyped, someone may be guessing codes"
    )]
    WrongCode,
    /// Someone joined and left without proving they knew the code.
    #[error(
        "someone used the code's number but did not prove they knew its words; the code is \
         burnt. If it was not your contact, someone may be guessing codes"
    )]
    Abandoned,
    /// No one came in time.
    #[error("no one used the code in time; it has expired")]
    Expired,
    /// The relay has no such rendezvous.
    #[error(
        "this relay has no open invitation with number {0}: the number may be mistyped, or the \
         code expired or was used; ask for a new code"
    )]
    UnknownCode(u32),
    /// Someone already joined the rendezvous.
    #[error(
        "this code has already been used; ask for a new one (if it was not you, someone may be \
         guessing codes)"
    )]
    Used,
    /// The inviter did not admit us.
    #[error("the inviter did not admit you: {0}")]
    Refused(String),
    /// The other side went away.
    #[error("the other side left before the invitation completed")]
    Left,
    /// The other side sent something that does not belong in the exchange.
    #[error("the invitation failed: {0}")]
    Protocol(String),
    /// Our client failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The relay failed.
    #[error("relay: {0}")]
    Relay(#[from] RelayClientError),
}

/// An open invitation: the code to tell the joiner, valid until it expires.
pub struct Invitation {
    relay: RelayClient,
    events: mpsc::Receiver<(u32, RendezvousEvent)>,
    /// The code.
    pub code: InviteCode,
    /// How long the relay keeps it open.
    pub expires_in: Duration,
}

impl Invitation {
    /// Waits (at most `wait`, and no longer than the code lives) for someone to
    /// come with the code. Needs no client: a program that keeps the profile open
    /// waits here beside its other work, then hands the arrival to
    /// [`Client::admit_arrived`].
    pub async fn arrival(self, wait: Duration) -> Result<Arrival, InviteError> {
        let code = self.code;
        let mut line = Line {
            relay: self.relay,
            events: self.events,
            nameplate: code.nameplate,
        };
        let deadline = Instant::now() + wait.min(self.expires_in);
        loop {
            match line.event(deadline).await {
                Ok(RendezvousEvent::Joined) => return Ok(Arrival { line, code }),
                Ok(RendezvousEvent::Closed) => return Err(InviteError::Expired),
                Ok(_) => {}
                Err(e) => {
                    line.close().await;
                    return Err(e);
                }
            }
        }
    }
}

/// Someone came to an invitation; not yet proven to know the code.
pub struct Arrival {
    line: Line,
    code: InviteCode,
}

/// One side's end of the rendezvous.
struct Line {
    relay: RelayClient,
    events: mpsc::Receiver<(u32, RendezvousEvent)>,
    nameplate: u32,
}

impl Line {
    async fn send(&mut self, wire: &Wire) -> Result<(), InviteError> {
        match self
            .relay
            .rendezvous_send(self.nameplate, wire.encode())
            .await
        {
            Ok(()) => Ok(()),
            Err(RelayClientError::Refused(ErrorCode::NoPeer | ErrorCode::UnknownRendezvous)) => {
                Err(self.why_gone().await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The other side is gone: did it say why before it left? What it said comes
    /// on the event stream, which may lag the answer to our send: read it up to the
    /// relay's notice that the rendezvous closed (or a few seconds, if that notice
    /// never comes).
    async fn why_gone(&mut self) -> InviteError {
        let deadline = Instant::now() + GONE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some((n, event))) if n == self.nameplate => event,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return InviteError::Left,
            };
            match event {
                RendezvousEvent::Data(bytes) => match Wire::decode(&bytes) {
                    Ok(Wire::Abort(AbortReason::WrongCode)) => return InviteError::WrongCode,
                    Ok(Wire::Abort(AbortReason::Refused)) => {
                        return InviteError::Refused("they declined".into());
                    }
                    _ => {}
                },
                RendezvousEvent::Closed => return InviteError::Left,
                _ => {}
            }
        }
    }

    async fn send_sealed(
        &mut self,
        session: &mut Session,
        plaintext: &[u8],
    ) -> Result<(), InviteError> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = session
            .seal(plaintext, nonce)
            .ok_or_else(|| InviteError::Protocol("cannot seal".into()))?;
        let parts = Wire::split(&sealed)
            .ok_or_else(|| InviteError::Protocol("the message is too large".into()))?;
        for part in &parts {
            self.send(part).await?;
        }
        Ok(())
    }

    /// The next event of our rendezvous, by `deadline`.
    async fn event(&mut self, deadline: Instant) -> Result<RendezvousEvent, InviteError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Err(_) => return Err(InviteError::Expired),
                Ok(None) => return Err(InviteError::Left),
                Ok(Some((n, event))) if n == self.nameplate => return Ok(event),
                Ok(Some(_)) => {}
            }
        }
    }

    /// The next message; the other side's departure is `gone`.
    async fn next(
        &mut self,
        deadline: Instant,
        gone: fn() -> InviteError,
    ) -> Result<Wire, InviteError> {
        loop {
            match self.event(deadline).await {
                Err(InviteError::Expired) => {
                    return Err(InviteError::Protocol(
                        "the other side stopped answering".into(),
                    ));
                }
                Err(e) => return Err(e),
                Ok(RendezvousEvent::Data(bytes)) => {
                    return Wire::decode(&bytes)
                        .map_err(|e| InviteError::Protocol(format!("a malformed message ({e})")));
                }
                Ok(RendezvousEvent::Closed) => return Err(gone()),
                Ok(_) => {}
            }
        }
    }

    /// A whole sealed message.
    async fn next_sealed(
        &mut self,
        session: &mut Session,
        deadline: Instant,
        gone: fn() -> InviteError,
    ) -> Result<Vec<u8>, InviteError> {
        let mut parts = Reassembly::default();
        loop {
            match self.next(deadline, gone).await? {
                Wire::Part {
                    index,
                    count,
                    bytes,
                } => {
                    let whole = parts
                        .add(index, count, bytes)
                        .map_err(|e| InviteError::Protocol(e.to_string()))?;
                    if let Some(sealed) = whole {
                        return session
                            .open(&sealed)
                            .ok_or_else(|| InviteError::Protocol("a message did not open".into()));
                    }
                }
                Wire::Abort(AbortReason::WrongCode) => return Err(InviteError::WrongCode),
                Wire::Abort(AbortReason::Refused) => {
                    return Err(InviteError::Refused("they declined".into()));
                }
                other => {
                    return Err(InviteError::Protocol(format!("unexpected {other:?}")));
                }
            }
        }
    }

    async fn close(&self) {
        let _ = self.relay.close_rendezvous(self.nameplate).await;
    }

    /// Gives up, telling the other side why.
    async fn abort(&mut self, reason: AbortReason, error: InviteError) -> InviteError {
        let _ = self.send(&Wire::Abort(reason)).await;
        self.close().await;
        error
    }
}

async fn connect(
    address: &RelayAddr,
    timeout: Duration,
) -> Result<(RelayClient, mpsc::Receiver<(u32, RendezvousEvent)>), InviteError> {
    let mut relay = RelayClient::connect(address, timeout).await?;
    let events = relay
        .rendezvous_events()
        .ok_or_else(|| InviteError::Protocol("no rendezvous events".into()))?;
    Ok((relay, events))
}

impl Client {
    /// Opens a one-time code at `relay`.
    pub async fn open_invitation(&mut self, relay: &RelayAddr) -> Result<Invitation, InviteError> {
        let (relay, events) = connect(relay, self.config.timing.timeout).await?;
        let (nameplate, expires_in) = relay.open_rendezvous().await?;
        let mut random = [0u8; 3];
        rand::rngs::OsRng.fill_bytes(&mut random);
        Ok(Invitation {
            relay,
            events,
            code: InviteCode::new(nameplate, random),
            expires_in,
        })
    }

    /// Waits (at most `wait`, and no longer than the code lives) for someone to use
    /// the code, checks they know it, and adds them to `channel`. Returns the name
    /// they joined under.
    pub async fn admit(
        &mut self,
        channel: &str,
        invitation: Invitation,
        wait: Duration,
    ) -> Result<String, InviteError> {
        let arrival = invitation.arrival(wait).await?;
        self.admit_arrived(channel, arrival).await
    }

    /// Admits the joiner who came to an invitation (see [`Invitation::arrival`]):
    /// the exchange that proves they know the code, then the add. Takes a few
    /// round trips through the relay.
    pub async fn admit_arrived(
        &mut self,
        channel: &str,
        arrival: Arrival,
    ) -> Result<String, InviteError> {
        let summary = self.engine().channel(channel).map_err(ClientError::from)?;
        let Arrival { mut line, code } = arrival;
        let step = || Instant::now() + STEP;
        let theirs = match line.next(step(), || InviteError::Abandoned).await? {
            Wire::Pake(m) => m,
            _ => {
                return Err(line
                    .abort(
                        AbortReason::Failed,
                        InviteError::Protocol("no PAKE message".into()),
                    )
                    .await);
            }
        };
        let (pake, mine) = Pake::start(Role::Inviter, &code);
        let Some(mut session) = pake.finish(&theirs) else {
            return Err(line
                .abort(
                    AbortReason::Failed,
                    InviteError::Protocol("a malformed PAKE message".into()),
                )
                .await);
        };
        // Until the joiner proves it knows the code, its leaving is suspicious.
        let unproven = |e: InviteError| match e {
            InviteError::Left => InviteError::Abandoned,
            other => other,
        };
        line.send(&Wire::Pake(mine)).await.map_err(unproven)?;
        line.send(&Wire::Confirm(session.confirmation()))
            .await
            .map_err(unproven)?;
        let own = summary
            .members
            .iter()
            .find(|m| m.is_self)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let offer = Offer {
            suite: summary.suite.code(),
            channel: summary
                .policy
                .as_ref()
                .map(|p| p.title.clone())
                .unwrap_or_else(|| summary.name.clone()),
            inviter: own,
        };
        line.send_sealed(&mut session, &offer.encode())
            .await
            .map_err(unproven)?;
        match line.next(step(), || InviteError::Abandoned).await? {
            Wire::Confirm(c) if session.confirms(&c) => {}
            Wire::Confirm(_) => {
                return Err(line
                    .abort(AbortReason::WrongCode, InviteError::WrongCode)
                    .await);
            }
            Wire::Abort(AbortReason::WrongCode) => {
                line.close().await;
                return Err(InviteError::WrongCode);
            }
            _ => {
                return Err(line
                    .abort(
                        AbortReason::Failed,
                        InviteError::Protocol("no confirmation".into()),
                    )
                    .await);
            }
        }
        let key_package = line
            .next_sealed(&mut session, step(), || InviteError::Left)
            .await?;
        let before: Vec<_> = summary.members.iter().map(|m| m.member).collect();
        let welcome = match self.add_members(channel, &[&key_package]) {
            Ok(w) => w,
            Err(e) => return Err(line.abort(AbortReason::Refused, e.into()).await),
        };
        let joined = self
            .engine()
            .channel(channel)
            .map_err(ClientError::from)?
            .members
            .into_iter()
            .find(|m| !before.contains(&m.member))
            .map(|m| m.name)
            .unwrap_or_default();
        let confirmed = match line.send_sealed(&mut session, &welcome).await {
            Ok(()) => line
                .next_sealed(&mut session, step(), || InviteError::Left)
                .await
                .map(|ack| ack == JOINED),
            Err(e) => Err(e),
        };
        line.close().await;
        match confirmed {
            Ok(true) => Ok(joined),
            Ok(false) => {
                self.remove_ghost(channel, &joined)?;
                Err(InviteError::Protocol(
                    "the joiner could not use the welcome".into(),
                ))
            }
            Err(e) => {
                self.remove_ghost(channel, &joined)?;
                Err(e)
            }
        }
    }

    /// The joiner never confirmed: takes it out again (what it would have read is
    /// sealed under keys it never got).
    fn remove_ghost(&mut self, channel: &str, name: &str) -> Result<(), InviteError> {
        if !name.is_empty() {
            self.remove_member(channel, name)?;
        }
        Ok(())
    }

    /// Joins a channel with a code: the rendezvous is at `relay`; our mailbox for the
    /// channel is made at `mailbox_relay` (which may be another relay). `own_name` is
    /// the name to go by; `name` the local name for the channel (default: its title).
    /// Returns the channel and the inviter's name.
    pub async fn join_with_code(
        &mut self,
        relay: &RelayAddr,
        mailbox_relay: &RelayAddr,
        code: &InviteCode,
        own_name: &str,
        name: Option<&str>,
    ) -> Result<(ChannelId, String), InviteError> {
        let (client, events) = connect(relay, self.config.timing.timeout).await?;
        match client.join_rendezvous(code.nameplate).await {
            Ok(()) => {}
            Err(RelayClientError::Refused(ErrorCode::UnknownRendezvous)) => {
                return Err(InviteError::UnknownCode(code.nameplate));
            }
            Err(RelayClientError::Refused(ErrorCode::RendezvousUsed)) => {
                return Err(InviteError::Used);
            }
            Err(e) => return Err(e.into()),
        }
        let mut line = Line {
            relay: client,
            events,
            nameplate: code.nameplate,
        };
        let step = || Instant::now() + STEP;
        let (pake, mine) = Pake::start(Role::Joiner, code);
        line.send(&Wire::Pake(mine)).await?;
        let theirs = match line.next(step(), || InviteError::Left).await? {
            Wire::Pake(m) => m,
            _ => {
                return Err(line
                    .abort(
                        AbortReason::Failed,
                        InviteError::Protocol("no PAKE message".into()),
                    )
                    .await);
            }
        };
        let Some(mut session) = pake.finish(&theirs) else {
            return Err(line
                .abort(
                    AbortReason::Failed,
                    InviteError::Protocol("a malformed PAKE message".into()),
                )
                .await);
        };
        match line.next(step(), || InviteError::Left).await? {
            Wire::Confirm(c) if session.confirms(&c) => {}
            Wire::Confirm(_) => {
                return Err(line
                    .abort(AbortReason::WrongCode, InviteError::WrongCode)
                    .await);
            }
            _ => {
                return Err(line
                    .abort(
                        AbortReason::Failed,
                        InviteError::Protocol("no confirmation".into()),
                    )
                    .await);
            }
        }
        let offer = line
            .next_sealed(&mut session, step(), || InviteError::Left)
            .await?;
        let offer = Offer::decode(&offer).map_err(|e| InviteError::Protocol(e.to_string()))?;
        let Some(suite) = Suite::from_code(offer.suite) else {
            return Err(line
                .abort(
                    AbortReason::Failed,
                    InviteError::Protocol(format!("unknown ciphersuite {:#06x}", offer.suite)),
                )
                .await);
        };
        let key_package = match self.key_package(own_name, suite, mailbox_relay).await {
            Ok(kp) => kp,
            Err(e) => return Err(line.abort(AbortReason::Failed, e.into()).await),
        };
        line.send(&Wire::Confirm(session.confirmation())).await?;
        line.send_sealed(&mut session, &key_package).await?;
        let welcome = line
            .next_sealed(&mut session, step(), || InviteError::Left)
            .await?;
        let id = match self.join(name, &welcome) {
            Ok(id) => id,
            Err(e) => return Err(line.abort(AbortReason::Failed, e.into()).await),
        };
        let sent = line.send_sealed(&mut session, JOINED).await;
        line.close().await;
        sent?;
        Ok((id, offer.inviter))
    }
}
