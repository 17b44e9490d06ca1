//! Every byte format that crosses a Backchannel process boundary.
//!
//! This crate turns bytes into types and back: relay and mailbox addresses,
//! application payloads with their padding, delivery envelopes (fragments of fixed
//! size), and the data Backchannel keeps in MLS extensions. It does no I/O, reads no
//! clock and holds no keys; sealing and opening envelopes happens in `core`.
//!
//! Every decoder is strict: lengths are bounded, padding must be zero, and trailing
//! bytes are an error. Decoders never panic, whatever the input; each has a property
//! test here and a fuzz target in `fuzz/`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;

pub mod addr;
pub mod attachment;
pub mod code;
pub mod control;
pub mod envelope;
pub mod frame;
pub mod integrity;
pub mod link;
pub mod member;
pub mod payload;
pub mod rendezvous;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("input ended early")]
    Truncated,
    /// A length field is larger than the format allows.
    #[error("a length is larger than allowed")]
    TooLong,
    /// Bytes remain after the structure.
    #[error("unexpected bytes after the end")]
    TrailingBytes,
    /// Padding is not all zero or not one of the allowed sizes.
    #[error("bad padding")]
    BadPadding,
    /// The input does not have the one size the format has.
    #[error("wrong size")]
    WrongSize,
    /// A version this build does not know.
    #[error("unknown version {0}")]
    UnknownVersion(u8),
    /// A kind or type code this build does not know.
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// Text that is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A field has a value the format forbids.
    #[error("invalid {0}")]
    InvalidValue(&'static str),
}
