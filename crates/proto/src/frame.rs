//! The relay protocol: fixed-size frames between a client and a relay.
//!
//! Every frame on the wire is exactly [`FRAME_LEN`] bytes, in both directions, acks
//! and errors included, so that a network observer learns nothing from sizes. A frame
//! is `u8 version || u8 kind || fields || zero padding`; decoding checks the length,
//! the version, every field, and that the padding is zero.
//!
//! The relay opens every connection with [`ServerFrame::Hello`], carrying a random
//! nonce. Requests that need the mailbox owner's authority ([`Request::Subscribe`],
//! [`Request::DeleteMailbox`]) carry an Ed25519 signature over
//! [`auth_message`] — a label, that nonce, the request kind, its identifier and the
//! mailbox — so a captured request is worthless on any other connection. Once a
//! connection has subscribed to a mailbox, it may acknowledge (delete) that mailbox's
//! messages.
//!
//! Mailbox identifiers: the recipient creates a mailbox by registering an
//! authorisation key, and gets two unrelated random identifiers, one to hand to
//! senders and one to read with.

use crate::DecodeError;
use crate::addr::MailboxId;
use crate::codec::{Reader, Writer};
use crate::envelope::BLOB_LEN;

/// Size of every frame, in both directions.
pub const FRAME_LEN: usize = 4096;

/// Protocol version carried by every frame.
pub const PROTOCOL_VERSION: u8 = 1;

/// Label of the signed authorisation message.
pub const AUTH_LABEL: &[u8] = b"backchannel/v1/relay-auth";

/// A blob: exactly [`BLOB_LEN`] bytes.
pub type Blob = Box<[u8; BLOB_LEN]>;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Keep-alive; answered with [`Response::Pong`].
    Ping,
    /// Create a mailbox owned by `auth_key` (Ed25519 public key).
    CreateMailbox {
        /// The key whose signatures authorise reading and deleting.
        auth_key: [u8; 32],
    },
    /// Put a blob into a mailbox. Answered with [`Response::Stored`] once durable.
    Send {
        /// The mailbox's send identifier.
        send_id: MailboxId,
        /// Seconds after which the relay must delete the blob if unread (0: the
        /// relay's own limit, which also caps this).
        ttl_secs: u32,
        /// The blob.
        blob: Blob,
    },
    /// Receive a mailbox's messages on this connection: every stored one, oldest
    /// first, then each new one as it arrives.
    Subscribe {
        /// The mailbox's read identifier.
        read_id: MailboxId,
        /// Signature by the mailbox's key over [`auth_message`].
        signature: [u8; 64],
    },
    /// Delete a delivered message (the client has stored it).
    Ack {
        /// The mailbox's read identifier (subscribed on this connection).
        read_id: MailboxId,
        /// The message.
        message_id: u64,
    },
    /// Delete a mailbox and everything in it.
    DeleteMailbox {
        /// The mailbox's read identifier.
        read_id: MailboxId,
        /// Signature by the mailbox's key over [`auth_message`].
        signature: [u8; 64],
    },
    /// Open a rendezvous for a one-time code: the relay picks its short number.
    /// Answered with [`Response::RendezvousOpened`].
    RendezvousOpen,
    /// Join the rendezvous with this number. Only one party ever joins a rendezvous:
    /// a second attempt is refused, so a guesser gets one guess per code.
    RendezvousJoin {
        /// The number from the code.
        nameplate: u32,
    },
    /// Pass bytes to the other party of a rendezvous this connection is in.
    RendezvousSend {
        /// The rendezvous.
        nameplate: u32,
        /// At most [`RENDEZVOUS_DATA_MAX`] bytes, opaque to the relay.
        data: Vec<u8>,
    },
    /// Close a rendezvous this connection is in (the other party is told).
    RendezvousClose {
        /// The rendezvous.
        nameplate: u32,
    },
    /// Reads messages of a mailbox without deleting them: up to `limit` (at most
    /// the window) with a relay message id above `after` come as deliveries, then
    /// the answer [`Response::Fetched`]. Signed like a subscription; keeps no
    /// state at the relay. Several readers can so read one mailbox (a file
    /// uploaded once for every member).
    Fetch {
        /// The mailbox.
        read_id: MailboxId,
        /// The owner's signature (see [`auth_message`]).
        signature: [u8; 64],
        /// Deliver messages with an id above this.
        after: u64,
        /// At most this many.
        limit: u16,
    },
}

/// Most bytes in one [`Request::RendezvousSend`].
pub const RENDEZVOUS_DATA_MAX: usize = 4000;

/// What happens in a rendezvous, pushed to its parties.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RendezvousEvent {
    /// Someone joined the rendezvous this connection opened.
    Joined,
    /// Bytes from the other party.
    Data(Vec<u8>),
    /// The other party closed it, left, or it expired.
    Closed,
}

/// A request with the identifier its response will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFrame {
    /// Chosen by the client; echoed in the response.
    pub request_id: u32,
    /// The request.
    pub request: Request,
}

/// An answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong,
    /// The mailbox exists.
    MailboxCreated {
        /// Give this to senders.
        send_id: MailboxId,
        /// Read with this.
        read_id: MailboxId,
    },
    /// The blob is durable.
    Stored,
    /// Subscribed; deliveries follow, starting with the `backlog` messages the
    /// mailbox held at that moment.
    Subscribed {
        /// Messages held when the subscription started.
        backlog: u64,
    },
    /// The message is deleted (or was already gone).
    Acked,
    /// The mailbox is deleted.
    Deleted,
    /// The rendezvous is open under this number, for this many seconds.
    RendezvousOpened {
        /// The number, for the code.
        nameplate: u32,
        /// Seconds before it expires.
        ttl_secs: u32,
    },
    /// Joined; the other party has been told.
    RendezvousJoined,
    /// Passed on to the other party.
    Forwarded,
    /// The rendezvous is closed.
    RendezvousClosed,
    /// The answer to [`Request::Fetch`], after its deliveries.
    Fetched {
        /// How many deliveries came before this answer.
        count: u16,
        /// The highest message id delivered (`after` when none was).
        last: u64,
    },
    /// The request failed.
    Error(ErrorCode),
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded.
    Malformed,
    /// No such mailbox.
    UnknownMailbox,
    /// The signature does not verify, or the connection is not subscribed.
    Unauthorized,
    /// The mailbox is full.
    QuotaExceeded,
    /// Too many requests; slow down.
    RateLimited,
    /// The relay cannot store anything right now; nothing was stored.
    Unavailable,
    /// Too many subscriptions on this connection.
    TooManySubscriptions,
    /// The relay is shutting down.
    ShuttingDown,
    /// No open rendezvous has this number (mistyped, expired or closed).
    UnknownRendezvous,
    /// Someone has already joined this rendezvous.
    RendezvousUsed,
    /// The other party of the rendezvous is not there (yet, or any more).
    NoPeer,
}

impl ErrorCode {
    fn code(self) -> u8 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnknownMailbox => 2,
            ErrorCode::Unauthorized => 3,
            ErrorCode::QuotaExceeded => 4,
            ErrorCode::RateLimited => 5,
            ErrorCode::Unavailable => 6,
            ErrorCode::TooManySubscriptions => 7,
            ErrorCode::ShuttingDown => 8,
            ErrorCode::UnknownRendezvous => 9,
            ErrorCode::RendezvousUsed => 10,
            ErrorCode::NoPeer => 11,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnknownMailbox,
            3 => ErrorCode::Unauthorized,
            4 => ErrorCode::QuotaExceeded,
            5 => ErrorCode::RateLimited,
            6 => ErrorCode::Unavailable,
            7 => ErrorCode::TooManySubscriptions,
            8 => ErrorCode::ShuttingDown,
            9 => ErrorCode::UnknownRendezvous,
            10 => ErrorCode::RendezvousUsed,
            11 => ErrorCode::NoPeer,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::Malformed => "the relay could not decode the request",
            ErrorCode::UnknownMailbox => "the relay has no such mailbox",
            ErrorCode::Unauthorized => "the relay refused: not authorised for this mailbox",
            ErrorCode::QuotaExceeded => "the mailbox is full",
            ErrorCode::RateLimited => "the relay is rate-limiting this connection",
            ErrorCode::Unavailable => "the relay cannot store messages right now",
            ErrorCode::TooManySubscriptions => "too many mailboxes on one connection",
            ErrorCode::ShuttingDown => "the relay is shutting down",
            ErrorCode::UnknownRendezvous => {
                "the relay has no open invitation with that number (mistyped, expired, or \
                 already finished)"
            }
            ErrorCode::RendezvousUsed => {
                "someone has already used this code; ask for a new one (if it was not you, \
                 someone may be guessing codes)"
            }
            ErrorCode::NoPeer => "the other side of the invitation is not connected",
        })
    }
}

/// A frame from the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// The first frame of every connection.
    Hello {
        /// Random; signatures on this connection cover it.
        nonce: [u8; 32],
        /// Most deliveries the relay sends per subscription before acknowledgements.
        window: u16,
    },
    /// The answer to a request.
    Response {
        /// The request's identifier.
        request_id: u32,
        /// The answer.
        response: Response,
    },
    /// A message from a subscribed mailbox.
    Deliver {
        /// The mailbox.
        read_id: MailboxId,
        /// The relay's identifier of the message, increasing within a mailbox.
        message_id: u64,
        /// The blob.
        blob: Blob,
    },
    /// Something happened in a rendezvous this connection is in.
    Rendezvous {
        /// The rendezvous.
        nameplate: u32,
        /// What.
        event: RendezvousEvent,
    },
}

/// The bytes an authorisation signature covers.
pub fn auth_message(nonce: &[u8; 32], kind: u8, request_id: u32, read_id: &MailboxId) -> Vec<u8> {
    let mut w = Writer::with_capacity(AUTH_LABEL.len() + 32 + 1 + 4 + 16);
    w.put(AUTH_LABEL);
    w.put(nonce);
    w.u8(kind);
    w.u32(request_id);
    w.put(&read_id.0);
    w.bytes
}

/// Kind byte of [`Request::Subscribe`], as covered by its signature.
pub const KIND_SUBSCRIBE: u8 = RequestKind::Subscribe as u8;
/// Kind byte of [`Request::DeleteMailbox`], as covered by its signature.
pub const KIND_DELETE_MAILBOX: u8 = RequestKind::DeleteMailbox as u8;
/// Kind byte of [`Request::Fetch`], as covered by its signature.
pub const KIND_FETCH: u8 = RequestKind::Fetch as u8;

/// What a request asks for: the byte that follows the version in a client frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum RequestKind {
    /// [`Request::Ping`].
    Ping = 1,
    /// [`Request::CreateMailbox`].
    CreateMailbox = 2,
    /// [`Request::Send`].
    Send = 3,
    /// [`Request::Subscribe`].
    Subscribe = 4,
    /// [`Request::Ack`].
    Ack = 5,
    /// [`Request::DeleteMailbox`].
    DeleteMailbox = 6,
    /// [`Request::RendezvousOpen`].
    RendezvousOpen = 7,
    /// [`Request::RendezvousJoin`].
    RendezvousJoin = 8,
    /// [`Request::RendezvousSend`].
    RendezvousSend = 9,
    /// [`Request::RendezvousClose`].
    RendezvousClose = 10,
    /// [`Request::Fetch`].
    Fetch = 11,
}

impl RequestKind {
    /// The kind a byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Ping,
            2 => Self::CreateMailbox,
            3 => Self::Send,
            4 => Self::Subscribe,
            5 => Self::Ack,
            6 => Self::DeleteMailbox,
            7 => Self::RendezvousOpen,
            8 => Self::RendezvousJoin,
            9 => Self::RendezvousSend,
            10 => Self::RendezvousClose,
            11 => Self::Fetch,
            _ => return None,
        })
    }
}

impl Request {
    /// Its kind.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Ping => RequestKind::Ping,
            Request::CreateMailbox { .. } => RequestKind::CreateMailbox,
            Request::Send { .. } => RequestKind::Send,
            Request::Subscribe { .. } => RequestKind::Subscribe,
            Request::Ack { .. } => RequestKind::Ack,
            Request::DeleteMailbox { .. } => RequestKind::DeleteMailbox,
            Request::RendezvousOpen => RequestKind::RendezvousOpen,
            Request::RendezvousJoin { .. } => RequestKind::RendezvousJoin,
            Request::RendezvousSend { .. } => RequestKind::RendezvousSend,
            Request::RendezvousClose { .. } => RequestKind::RendezvousClose,
            Request::Fetch { .. } => RequestKind::Fetch,
        }
    }
}

fn finish_frame(mut w: Writer) -> Vec<u8> {
    w.bytes.resize(FRAME_LEN, 0);
    w.bytes
}

fn start_frame(r: &mut Reader<'_>, bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() != FRAME_LEN {
        return Err(DecodeError::WrongSize);
    }
    let version = r.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    Ok(())
}

fn end_frame(mut r: Reader<'_>) -> Result<(), DecodeError> {
    r.zero_padding()?;
    r.finish()
}

/// Rendezvous data: u16 length, then the bytes (the encoder truncates to the
/// maximum; callers split larger messages).
fn put_data(w: &mut Writer, data: &[u8]) {
    let data = data.get(..RENDEZVOUS_DATA_MAX).unwrap_or(data);
    w.u16(data.len() as u16);
    w.put(data);
}

fn read_data(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > RENDEZVOUS_DATA_MAX {
        return Err(DecodeError::TooLong);
    }
    Ok(r.take(len)?.to_vec())
}

fn read_blob(r: &mut Reader<'_>) -> Result<Blob, DecodeError> {
    let mut blob = Box::new([0u8; BLOB_LEN]);
    blob.copy_from_slice(r.take(BLOB_LEN)?);
    Ok(blob)
}

impl ClientFrame {
    /// Encodes to exactly [`FRAME_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(FRAME_LEN);
        w.u8(PROTOCOL_VERSION);
        w.u8(self.request.kind() as u8);
        w.u32(self.request_id);
        match &self.request {
            Request::Ping | Request::RendezvousOpen => {}
            Request::CreateMailbox { auth_key } => {
                w.put(auth_key);
            }
            Request::Send {
                send_id,
                ttl_secs,
                blob,
            } => {
                w.put(&send_id.0);
                w.u32(*ttl_secs);
                w.put(&blob[..]);
            }
            Request::Subscribe { read_id, signature } => {
                w.put(&read_id.0);
                w.put(signature);
            }
            Request::Ack {
                read_id,
                message_id,
            } => {
                w.put(&read_id.0);
                w.u64(*message_id);
            }
            Request::DeleteMailbox { read_id, signature } => {
                w.put(&read_id.0);
                w.put(signature);
            }
            Request::RendezvousJoin { nameplate } => {
                w.u32(*nameplate);
            }
            Request::RendezvousSend { nameplate, data } => {
                w.u32(*nameplate);
                put_data(&mut w, data);
            }
            Request::RendezvousClose { nameplate } => {
                w.u32(*nameplate);
            }
            Request::Fetch {
                read_id,
                signature,
                after,
                limit,
            } => {
                w.put(&read_id.0);
                w.put(signature);
                w.u64(*after);
                w.u16(*limit);
            }
        }
        finish_frame(w)
    }

    /// Decodes a frame strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        start_frame(&mut r, bytes)?;
        let kind = r.u8()?;
        let request_id = r.u32()?;
        let kind = RequestKind::from_byte(kind).ok_or(DecodeError::UnknownKind(kind))?;
        let request = match kind {
            RequestKind::Ping => Request::Ping,
            RequestKind::CreateMailbox => Request::CreateMailbox {
                auth_key: r.array()?,
            },
            RequestKind::Send => Request::Send {
                send_id: MailboxId(r.array()?),
                ttl_secs: r.u32()?,
                blob: read_blob(&mut r)?,
            },
            RequestKind::Subscribe => Request::Subscribe {
                read_id: MailboxId(r.array()?),
                signature: r.array()?,
            },
            RequestKind::Ack => Request::Ack {
                read_id: MailboxId(r.array()?),
                message_id: r.u64()?,
            },
            RequestKind::DeleteMailbox => Request::DeleteMailbox {
                read_id: MailboxId(r.array()?),
                signature: r.array()?,
            },
            RequestKind::RendezvousOpen => Request::RendezvousOpen,
            RequestKind::RendezvousJoin => Request::RendezvousJoin {
                nameplate: r.u32()?,
            },
            RequestKind::RendezvousSend => Request::RendezvousSend {
                nameplate: r.u32()?,
                data: read_data(&mut r)?,
            },
            RequestKind::RendezvousClose => Request::RendezvousClose {
                nameplate: r.u32()?,
            },
            RequestKind::Fetch => Request::Fetch {
                read_id: MailboxId(r.array()?),
                signature: r.array()?,
                after: r.u64()?,
                limit: r.u16()?,
            },
        };
        end_frame(r)?;
        Ok(Self {
            request_id,
            request,
        })
    }
}

impl ServerFrame {
    /// Encodes to exactly [`FRAME_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(FRAME_LEN);
        w.u8(PROTOCOL_VERSION);
        match self {
            ServerFrame::Hello { nonce, window } => {
                w.u8(1);
                w.put(nonce);
                w.u16(*window);
            }
            ServerFrame::Response {
                request_id,
                response,
            } => {
                w.u8(2);
                w.u32(*request_id);
                match response {
                    Response::Pong => w.u8(1),
                    Response::MailboxCreated { send_id, read_id } => {
                        w.u8(2);
                        w.put(&send_id.0);
                        w.put(&read_id.0);
                    }
                    Response::Stored => w.u8(3),
                    Response::Subscribed { backlog } => {
                        w.u8(4);
                        w.u64(*backlog);
                    }
                    Response::Acked => w.u8(5),
                    Response::Deleted => w.u8(6),
                    Response::Error(code) => {
                        w.u8(7);
                        w.u8(code.code());
                    }
                    Response::RendezvousOpened {
                        nameplate,
                        ttl_secs,
                    } => {
                        w.u8(8);
                        w.u32(*nameplate);
                        w.u32(*ttl_secs);
                    }
                    Response::RendezvousJoined => w.u8(9),
                    Response::Forwarded => w.u8(10),
                    Response::RendezvousClosed => w.u8(11),
                    Response::Fetched { count, last } => {
                        w.u8(12);
                        w.u16(*count);
                        w.u64(*last);
                    }
                }
            }
            ServerFrame::Deliver {
                read_id,
                message_id,
                blob,
            } => {
                w.u8(3);
                w.put(&read_id.0);
                w.u64(*message_id);
                w.put(&blob[..]);
            }
            ServerFrame::Rendezvous { nameplate, event } => {
                w.u8(4);
                w.u32(*nameplate);
                match event {
                    RendezvousEvent::Joined => w.u8(1),
                    RendezvousEvent::Data(data) => {
                        w.u8(2);
                        put_data(&mut w, data);
                    }
                    RendezvousEvent::Closed => w.u8(3),
                }
            }
        }
        finish_frame(w)
    }

    /// Decodes a frame strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        start_frame(&mut r, bytes)?;
        let frame = match r.u8()? {
            1 => ServerFrame::Hello {
                nonce: r.array()?,
                window: r.u16()?,
            },
            2 => {
                let request_id = r.u32()?;
                let response = match r.u8()? {
                    1 => Response::Pong,
                    2 => Response::MailboxCreated {
                        send_id: MailboxId(r.array()?),
                        read_id: MailboxId(r.array()?),
                    },
                    3 => Response::Stored,
                    4 => Response::Subscribed { backlog: r.u64()? },
                    5 => Response::Acked,
                    6 => Response::Deleted,
                    7 => Response::Error(ErrorCode::from_code(r.u8()?)?),
                    8 => Response::RendezvousOpened {
                        nameplate: r.u32()?,
                        ttl_secs: r.u32()?,
                    },
                    9 => Response::RendezvousJoined,
                    10 => Response::Forwarded,
                    11 => Response::RendezvousClosed,
                    12 => Response::Fetched {
                        count: r.u16()?,
                        last: r.u64()?,
                    },
                    other => return Err(DecodeError::UnknownKind(other)),
                };
                ServerFrame::Response {
                    request_id,
                    response,
                }
            }
            3 => ServerFrame::Deliver {
                read_id: MailboxId(r.array()?),
                message_id: r.u64()?,
                blob: read_blob(&mut r)?,
            },
            4 => {
                let nameplate = r.u32()?;
                let event = match r.u8()? {
                    1 => RendezvousEvent::Joined,
                    2 => RendezvousEvent::Data(read_data(&mut r)?),
                    3 => RendezvousEvent::Closed,
                    other => return Err(DecodeError::UnknownKind(other)),
                };
                ServerFrame::Rendezvous { nameplate, event }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        end_frame(r)?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(b: u8) -> Blob {
        Box::new([b; BLOB_LEN])
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::Ping,
            Request::CreateMailbox { auth_key: [1; 32] },
            Request::Send {
                send_id: MailboxId([2; 16]),
                ttl_secs: 3600,
                blob: blob(3),
            },
            Request::Subscribe {
                read_id: MailboxId([4; 16]),
                signature: [5; 64],
            },
            Request::Ack {
                read_id: MailboxId([6; 16]),
                message_id: 77,
            },
            Request::DeleteMailbox {
                read_id: MailboxId([8; 16]),
                signature: [9; 64],
            },
            Request::RendezvousOpen,
            Request::RendezvousJoin { nameplate: 17 },
            Request::RendezvousSend {
                nameplate: 17,
                data: vec![0xab; RENDEZVOUS_DATA_MAX],
            },
            Request::RendezvousSend {
                nameplate: 17,
                data: vec![],
            },
            Request::RendezvousClose { nameplate: 17 },
            Request::Fetch {
                read_id: MailboxId([10; 16]),
                signature: [11; 64],
                after: u64::MAX - 1,
                limit: 64,
            },
        ]
    }

    #[test]
    fn each_request_kind_keeps_its_byte() {
        // The wire numbers, written out: changing one breaks every deployed relay.
        let expected = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10, 11];
        for (request, byte) in requests().into_iter().zip(expected) {
            let frame = ClientFrame {
                request_id: 3,
                request,
            };
            let bytes = frame.encode();
            assert_eq!(bytes.get(1), Some(&byte), "{:?}", frame.request.kind());
            assert_eq!(RequestKind::from_byte(byte), Some(frame.request.kind()));
            assert_eq!(ClientFrame::decode(&bytes).ok(), Some(frame));
        }
        assert_eq!(RequestKind::from_byte(0), None);
        assert_eq!(RequestKind::from_byte(12), None);
    }

    fn server_frames() -> Vec<ServerFrame> {
        let mut out = vec![
            ServerFrame::Hello {
                nonce: [1; 32],
                window: 64,
            },
            ServerFrame::Deliver {
                read_id: MailboxId([2; 16]),
                message_id: u64::MAX,
                blob: blob(0xaa),
            },
            ServerFrame::Rendezvous {
                nameplate: 5,
                event: RendezvousEvent::Joined,
            },
            ServerFrame::Rendezvous {
                nameplate: 5,
                event: RendezvousEvent::Data(vec![7; RENDEZVOUS_DATA_MAX]),
            },
            ServerFrame::Rendezvous {
                nameplate: 5,
                event: RendezvousEvent::Closed,
            },
        ];
        let responses = [
            Response::Pong,
            Response::MailboxCreated {
                send_id: MailboxId([3; 16]),
                read_id: MailboxId([4; 16]),
            },
            Response::Stored,
            Response::Subscribed { backlog: 12 },
            Response::Fetched {
                count: 64,
                last: 1 << 40,
            },
            Response::Acked,
            Response::Deleted,
            Response::Error(ErrorCode::Malformed),
            Response::Error(ErrorCode::UnknownMailbox),
            Response::Error(ErrorCode::Unauthorized),
            Response::Error(ErrorCode::QuotaExceeded),
            Response::Error(ErrorCode::RateLimited),
            Response::Error(ErrorCode::Unavailable),
            Response::Error(ErrorCode::TooManySubscriptions),
            Response::Error(ErrorCode::ShuttingDown),
            Response::Error(ErrorCode::UnknownRendezvous),
            Response::Error(ErrorCode::RendezvousUsed),
            Response::Error(ErrorCode::NoPeer),
            Response::RendezvousOpened {
                nameplate: 42,
                ttl_secs: 600,
            },
            Response::RendezvousJoined,
            Response::Forwarded,
            Response::RendezvousClosed,
        ];
        for (i, response) in responses.into_iter().enumerate() {
            out.push(ServerFrame::Response {
                request_id: i as u32,
                response,
            });
        }
        out
    }

    #[test]
    fn every_frame_has_one_size_and_round_trips() {
        for (i, request) in requests().into_iter().enumerate() {
            let frame = ClientFrame {
                request_id: 1000 + i as u32,
                request,
            };
            let bytes = frame.encode();
            assert_eq!(bytes.len(), FRAME_LEN);
            assert_eq!(ClientFrame::decode(&bytes).unwrap(), frame);
        }
        for frame in server_frames() {
            let bytes = frame.encode();
            assert_eq!(bytes.len(), FRAME_LEN);
            assert_eq!(ServerFrame::decode(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn known_encodings() {
        let ping = ClientFrame {
            request_id: 0x01020304,
            request: Request::Ping,
        }
        .encode();
        assert_eq!(&ping[..6], &[1, 1, 1, 2, 3, 4]);
        assert!(ping[6..].iter().all(|&b| b == 0));
        let stored = ServerFrame::Response {
            request_id: 9,
            response: Response::Stored,
        }
        .encode();
        assert_eq!(&stored[..7], &[1, 2, 0, 0, 0, 9, 3]);
        let auth = auth_message(&[7; 32], KIND_SUBSCRIBE, 5, &MailboxId([8; 16]));
        let mut expected = AUTH_LABEL.to_vec();
        expected.extend([7; 32]);
        expected.extend([4, 0, 0, 0, 5]);
        expected.extend([8; 16]);
        assert_eq!(auth, expected);
    }

    #[test]
    fn strict_decoding() {
        let good = ClientFrame {
            request_id: 1,
            request: Request::Ping,
        }
        .encode();
        assert_eq!(
            ClientFrame::decode(&good[..FRAME_LEN - 1]),
            Err(DecodeError::WrongSize)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(ClientFrame::decode(&long), Err(DecodeError::WrongSize));
        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(
            ClientFrame::decode(&bad),
            Err(DecodeError::UnknownVersion(2))
        );
        let mut bad = good.clone();
        bad[1] = 99;
        assert_eq!(ClientFrame::decode(&bad), Err(DecodeError::UnknownKind(99)));
        let mut bad = good.clone();
        bad[FRAME_LEN - 1] = 1;
        assert_eq!(ClientFrame::decode(&bad), Err(DecodeError::BadPadding));
        let mut bad = ServerFrame::Response {
            request_id: 1,
            response: Response::Error(ErrorCode::Malformed),
        }
        .encode();
        bad[7] = 200;
        assert!(ServerFrame::decode(&bad).is_err());
    }

    proptest! {
        #[test]
        fn send_frames_round_trip(id in any::<u32>(), mailbox in any::<[u8; 16]>(), fill in any::<u8>()) {
            let frame = ClientFrame {
                request_id: id,
                request: Request::Send { send_id: MailboxId(mailbox), ttl_secs: 0, blob: blob(fill) },
            };
            prop_assert_eq!(ClientFrame::decode(&frame.encode()).unwrap(), frame);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), kind in any::<u8>()) {
            let mut frame = vec![0u8; FRAME_LEN];
            frame[0] = PROTOCOL_VERSION;
            frame[1] = kind;
            for (i, b) in bytes.iter().enumerate() {
                frame[2 + i] = *b;
            }
            let _ = ClientFrame::decode(&frame);
            let _ = ServerFrame::decode(&frame);
            let _ = ClientFrame::decode(&bytes);
            let _ = ServerFrame::decode(&bytes);
        }
    }
}
