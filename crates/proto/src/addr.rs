//! Relay and mailbox addresses.
//!
//! A relay address names a relay by the SHA-256 fingerprint of its TLS certificate
//! plus where to reach it: `bcr://<fingerprint>@host:port`. The client pins that
//! certificate; no certificate authority is involved. The fingerprint is written in
//! lowercase RFC 4648 base32 without padding (52 characters).
//!
//! A relay of several nodes (which share one certificate) has one address with
//! several hosts, tried in order: `bcr://<fingerprint>@host1:port1,host2:port2`.

use std::fmt;
use std::str::FromStr;

use crate::DecodeError;
use crate::codec::{Reader, Writer};

/// URI scheme of relay addresses.
pub const RELAY_SCHEME: &str = "bcr://";

/// Longest host name accepted (DNS limit).
pub const MAX_HOST_LEN: usize = 253;

/// Most hosts in one relay address.
pub const MAX_HOSTS: usize = 8;

/// Longest relay address, written out (it must fit where addresses are carried
/// with a one-byte length).
pub const MAX_ADDR_LEN: usize = 255;

/// The SHA-256 fingerprint of a relay's certificate.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_encode(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Where a relay is and which certificate it must present.
#[derive(
    Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct RelayAddr {
    /// Fingerprint of the relay's certificate.
    pub fingerprint: Fingerprint,
    /// DNS name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Further hosts of the same relay (nodes sharing its certificate), tried in
    /// order after the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternates: Vec<(String, u16)>,
}

/// Why a relay address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// The string does not start with `bcr://`.
    #[error("a relay address starts with bcr://")]
    Scheme,
    /// The `fingerprint@` part is missing.
    #[error("the relay address has no certificate fingerprint before '@'")]
    MissingFingerprint,
    /// The fingerprint is not 52 characters of lowercase base32.
    #[error("the certificate fingerprint is not 52 characters of base32 (a-z, 2-7)")]
    Fingerprint,
    /// The host is empty, too long or has characters a host name cannot have.
    #[error("the host name is not valid")]
    Host,
    /// The port is missing or not a number from 1 to 65535.
    #[error("the port is missing or not a number from 1 to 65535")]
    Port,
    /// More hosts than [`MAX_HOSTS`], one twice, or longer than [`MAX_ADDR_LEN`].
    #[error("a relay address has at most 8 different hosts and 255 characters")]
    Hosts,
}

impl RelayAddr {
    /// Builds an address after checking the host.
    pub fn new(fingerprint: Fingerprint, host: &str, port: u16) -> Result<Self, AddrError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        check_host(host)?;
        if port == 0 {
            return Err(AddrError::Port);
        }
        Ok(Self {
            fingerprint,
            host: host.to_ascii_lowercase(),
            port,
            alternates: Vec::new(),
        })
    }

    /// Builds an address with several hosts, tried in the order given.
    pub fn with_hosts(fingerprint: Fingerprint, hosts: &[(&str, u16)]) -> Result<Self, AddrError> {
        let ((first, port), rest) = hosts.split_first().ok_or(AddrError::Host)?;
        let mut addr = Self::new(fingerprint, first, *port)?;
        for (host, port) in rest {
            let more = Self::new(fingerprint, host, *port)?;
            addr.alternates.push((more.host, more.port));
        }
        addr.check_hosts()?;
        Ok(addr)
    }

    fn check_hosts(&self) -> Result<(), AddrError> {
        let hosts: Vec<(&str, u16)> = self.hosts().collect();
        let distinct = hosts
            .iter()
            .enumerate()
            .all(|(i, h)| !hosts.iter().skip(i + 1).any(|o| o == h));
        if hosts.len() > MAX_HOSTS || !distinct || self.to_string().len() > MAX_ADDR_LEN {
            return Err(AddrError::Hosts);
        }
        Ok(())
    }

    /// Every host of the relay with its port, in the order to try them.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, u16)> {
        std::iter::once((self.host.as_str(), self.port))
            .chain(self.alternates.iter().map(|(h, p)| (h.as_str(), *p)))
    }

    /// The same relay at one of its hosts only (`index` in the order of
    /// [`RelayAddr::hosts`]).
    pub fn at_host(&self, index: usize) -> Option<RelayAddr> {
        let (host, port) = self.hosts().nth(index)?;
        Some(RelayAddr {
            fingerprint: self.fingerprint,
            host: host.to_owned(),
            port,
            alternates: Vec::new(),
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.put(&self.fingerprint.0);
        w.bytes8(self.host.as_bytes());
        w.u16(self.port);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let fingerprint = Fingerprint(r.array()?);
        let host = r.str8(MAX_HOST_LEN)?;
        let port = r.u16()?;
        let addr = Self::new(fingerprint, host, port)
            .map_err(|_| DecodeError::InvalidValue("relay address"))?;
        // Only the canonical form (lowercase, no brackets) is accepted, so that an
        // encoding has one meaning and one meaning has one encoding.
        if addr.host != host {
            return Err(DecodeError::InvalidValue(
                "relay host not in canonical form",
            ));
        }
        Ok(addr)
    }

    /// The further hosts, after the first: a u8 count, then each host and port
    /// as in [`RelayAddr::encode`].
    pub(crate) fn encode_alternates(&self, w: &mut Writer) {
        w.u8(self.alternates.len() as u8);
        for (host, port) in &self.alternates {
            w.bytes8(host.as_bytes());
            w.u16(*port);
        }
    }

    pub(crate) fn decode_alternates(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let count = r.u8()?;
        for _ in 0..count {
            let host = r.str8(MAX_HOST_LEN)?;
            let port = r.u16()?;
            let more = Self::new(self.fingerprint, host, port)
                .map_err(|_| DecodeError::InvalidValue("relay address"))?;
            if more.host != host {
                return Err(DecodeError::InvalidValue(
                    "relay host not in canonical form",
                ));
            }
            self.alternates.push((more.host, more.port));
        }
        self.check_hosts()
            .map_err(|_| DecodeError::InvalidValue("relay hosts"))
    }

    /// `host:port` of the first host as a socket address string (IPv6 in
    /// brackets).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RELAY_SCHEME}{}@", self.fingerprint)?;
        for (i, (host, port)) in self.hosts().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&authority(host, port))?;
        }
        Ok(())
    }
}

impl FromStr for RelayAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(RELAY_SCHEME)
            .ok_or(AddrError::Scheme)?;
        let (fp, hostport) = rest.split_once('@').ok_or(AddrError::MissingFingerprint)?;
        let fp = base32_decode(&fp.to_ascii_lowercase()).ok_or(AddrError::Fingerprint)?;
        let fingerprint = Fingerprint(fp.try_into().map_err(|_| AddrError::Fingerprint)?);
        let hosts = hostport
            .split(',')
            .map(|hostport| {
                let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                    v6.split_once("]:").ok_or(AddrError::Port)?
                } else {
                    hostport.rsplit_once(':').ok_or(AddrError::Port)?
                };
                let port: u16 = port.parse().map_err(|_| AddrError::Port)?;
                Ok((host, port))
            })
            .collect::<Result<Vec<_>, AddrError>>()?;
        if hosts.len() > MAX_HOSTS {
            return Err(AddrError::Hosts);
        }
        Self::with_hosts(fingerprint, &hosts)
    }
}

fn check_host(host: &str) -> Result<(), AddrError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':');
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.chars().all(ok_char) {
        return Err(AddrError::Host);
    }
    Ok(())
}

/// A mailbox identifier: 128 random bits chosen by the relay.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MailboxId(pub [u8; 16]);

impl fmt::Debug for MailboxId {
    // Identifiers are never printed in full: logs must not carry them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MailboxId(..)")
    }
}

/// Where to send messages for one member of one channel: a relay and the
/// send identifier of that member's inbound mailbox there.
#[derive(
    Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct MailboxAddr {
    /// The relay holding the mailbox.
    pub relay: RelayAddr,
    /// The identifier used to send into the mailbox (not the one to read it).
    pub send_id: MailboxId,
}

impl MailboxAddr {
    pub(crate) fn encode(&self, w: &mut Writer) {
        self.relay.encode(w);
        w.put(&self.send_id.0);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let relay = RelayAddr::decode(r)?;
        let send_id = MailboxId(r.array()?);
        Ok(Self { relay, send_id })
    }
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Lowercase RFC 4648 base32 without padding.
#[allow(clippy::indexing_slicing)] // indices are masked to 0..32
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes [`base32_encode`] output; `None` on any character outside the
/// alphabet or non-zero trailing bits.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = BASE32.iter().position(|&x| x == c)? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    if bits >= 5 || (buffer & ((1 << bits) - 1)) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base32_known_answers() {
        // RFC 4648 section 10, lowercased and unpadded.
        assert_eq!(base32_encode(b""), "");
        assert_eq!(base32_encode(b"f"), "my");
        assert_eq!(base32_encode(b"fo"), "mzxq");
        assert_eq!(base32_encode(b"foo"), "mzxw6");
        assert_eq!(base32_encode(b"foob"), "mzxw6yq");
        assert_eq!(base32_encode(b"fooba"), "mzxw6ytb");
        assert_eq!(base32_encode(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32_decode("mzxw6ytboi").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(base32_decode("mzxw6ytboj"), None, "non-zero trailing bits");
        assert_eq!(
            base32_decode("MZXW"),
            None,
            "uppercase is normalised by callers"
        );
    }

    #[test]
    fn relay_address_round_trip_and_errors() {
        let addr = RelayAddr::new(Fingerprint([7; 32]), "relay.example.org", 7443).unwrap();
        let text = addr.to_string();
        assert!(text.starts_with("bcr://"));
        assert_eq!(
            text.len(),
            "bcr://".len() + 52 + "@relay.example.org:7443".len()
        );
        assert_eq!(text.parse::<RelayAddr>().unwrap(), addr);

        let v6 = RelayAddr::new(Fingerprint([1; 32]), "::1", 9).unwrap();
        assert!(v6.to_string().ends_with("@[::1]:9"));
        assert_eq!(v6.to_string().parse::<RelayAddr>().unwrap(), v6);

        let fp = Fingerprint([7; 32]).to_string();
        assert_eq!("https://x".parse::<RelayAddr>(), Err(AddrError::Scheme));
        assert_eq!(
            "bcr://host:1".parse::<RelayAddr>(),
            Err(AddrError::MissingFingerprint)
        );
        assert_eq!(
            "bcr://abc@host:1".parse::<RelayAddr>(),
            Err(AddrError::Fingerprint)
        );
        assert_eq!(
            format!("bcr://{fp}@host").parse::<RelayAddr>(),
            Err(AddrError::Port)
        );
        assert_eq!(
            format!("bcr://{fp}@host:0").parse::<RelayAddr>(),
            Err(AddrError::Port)
        );
        assert_eq!(
            format!("bcr://{fp}@ho st:1").parse::<RelayAddr>(),
            Err(AddrError::Host)
        );
        assert_eq!(
            format!("bcr://{fp}@:1").parse::<RelayAddr>(),
            Err(AddrError::Host)
        );
    }

    #[test]
    fn a_relay_of_several_hosts_has_one_address() {
        let fp = Fingerprint([7; 32]);
        let text = format!("bcr://{fp}@node1.example:7443,[::1]:7444,10.0.0.3:7445");
        let addr: RelayAddr = text.parse().unwrap();
        assert_eq!(
            addr.hosts().collect::<Vec<_>>(),
            [("node1.example", 7443), ("::1", 7444), ("10.0.0.3", 7445)]
        );
        assert_eq!(addr.to_string(), text);
        assert_eq!(addr.authority(), "node1.example:7443");
        assert_eq!(
            addr.at_host(1).unwrap().to_string(),
            format!("bcr://{fp}@[::1]:7444")
        );
        assert!(addr.at_host(3).is_none());
        // Hosts are normalised as a single host is.
        let upper: RelayAddr = format!("bcr://{fp}@NODE1.example:7443,[::1]:7444,10.0.0.3:7445")
            .parse()
            .unwrap();
        assert_eq!(upper, addr);
        for bad in [
            format!("bcr://{fp}@a:1,"),
            format!("bcr://{fp}@a:1,,b:2"),
            format!("bcr://{fp}@a:1,b"),
        ] {
            assert!(bad.parse::<RelayAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            format!("bcr://{fp}@a:1,b:2,a:1").parse::<RelayAddr>(),
            Err(AddrError::Hosts),
            "a host twice"
        );
        let nine: Vec<String> = (1..=9).map(|i| format!("h{i}:1")).collect();
        assert_eq!(
            format!("bcr://{fp}@{}", nine.join(",")).parse::<RelayAddr>(),
            Err(AddrError::Hosts)
        );
        let long = "x".repeat(100);
        assert_eq!(
            format!("bcr://{fp}@{long}a:1,{long}b:1").parse::<RelayAddr>(),
            Err(AddrError::Hosts),
            "longer than 255 characters"
        );
    }

    proptest! {
        #[test]
        fn base32_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(base32_decode(&base32_encode(&bytes)), Some(bytes));
        }

        #[test]
        fn parsing_never_panics(s in ".{0,120}") {
            let _ = s.parse::<RelayAddr>();
        }
    }
}
