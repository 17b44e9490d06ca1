//! Strict binary reading and writing shared by every format in this crate.
//!
//! Readers never panic: every length is checked against what remains and against
//! the bound the format sets, and [`Reader::finish`] rejects trailing bytes.

use crate::DecodeError;

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Bytes prefixed by a one-byte length, at most `max` long.
    pub(crate) fn bytes8(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u8()?);
        self.bounded(len, max)
    }

    /// Bytes prefixed by a four-byte length, at most `max` long.
    pub(crate) fn bytes32(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError::TooLong)?;
        self.bounded(len, max)
    }

    fn bounded(&mut self, len: usize, max: usize) -> Result<&'a [u8], DecodeError> {
        if len > max {
            return Err(DecodeError::TooLong);
        }
        self.take(len)
    }

    /// A UTF-8 string prefixed by a one-byte length.
    pub(crate) fn str8(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes8(max)?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Everything that is left; the remaining bytes must all be zero padding.
    pub(crate) fn zero_padding(&mut self) -> Result<(), DecodeError> {
        let rest = self.take(self.bytes.len())?;
        if rest.iter().any(|&b| b != 0) {
            return Err(DecodeError::BadPadding);
        }
        Ok(())
    }

    /// Ends decoding: trailing bytes are an error.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// An append-only byte writer. Lengths are checked by the encoder that calls it,
/// against the same bounds the reader enforces.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(n),
        }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }

    /// Writes a one-byte length prefix; the caller has checked `bytes.len() <= 255`.
    pub(crate) fn bytes8(&mut self, bytes: &[u8]) {
        self.u8(bytes.len() as u8);
        self.put(bytes);
    }

    /// Writes a four-byte length prefix; the caller has checked the bound.
    pub(crate) fn bytes32(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.put(bytes);
    }
}
