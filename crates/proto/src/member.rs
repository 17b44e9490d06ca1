//! Data Backchannel puts into MLS extensions.
//!
//! - [`MemberInfo`] is a leaf-node extension: where to reach this member.
//! - [`ChannelPolicy`] is a group-context extension: who administers the channel
//!   and its life-cycle settings. Only the administrator's commits may change it.
//!
//! Both are authenticated by MLS (leaf signatures, the group context), so a relay
//! cannot redirect a member's mail or change a channel's rules.

use crate::DecodeError;
use crate::addr::MailboxAddr;
use crate::codec::{Reader, Writer};

/// MLS extension type of [`MemberInfo`] (private-use range).
pub const MEMBER_INFO_EXTENSION: u16 = 0xF0B1;

/// MLS extension type of [`ChannelPolicy`] (private-use range).
pub const CHANNEL_POLICY_EXTENSION: u16 = 0xF0B2;

const MEMBER_INFO_VERSION: u8 = 1;
/// The version whose mailbox relay has several hosts (they follow the mailbox).
/// A relay of one host is always written as version 1, which every client reads.
const MEMBER_INFO_VERSION_HOSTS: u8 = 2;
const CHANNEL_POLICY_VERSION: u8 = 1;

/// Longest display name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A member's leaf-node extension. (The MLS credential carries the member's
/// identifier; this carries what people and clients need to reach them.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The name the member goes by in this channel.
    pub name: String,
    /// The member's inbound mailbox for this channel.
    pub mailbox: MailboxAddr,
}

impl MemberInfo {
    /// Encodes the extension body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let several = !self.mailbox.relay.alternates.is_empty();
        w.u8(if several {
            MEMBER_INFO_VERSION_HOSTS
        } else {
            MEMBER_INFO_VERSION
        });
        w.bytes8(self.name.as_bytes());
        self.mailbox.encode(&mut w);
        if several {
            self.mailbox.relay.encode_alternates(&mut w);
        }
        w.bytes
    }

    /// Decodes the extension body strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != MEMBER_INFO_VERSION && version != MEMBER_INFO_VERSION_HOSTS {
            return Err(DecodeError::UnknownVersion(version));
        }
        let name = r.str8(MAX_NAME_LEN)?;
        check_name(name).map_err(|_| DecodeError::InvalidValue("member name"))?;
        let mut mailbox = MailboxAddr::decode(&mut r)?;
        if version == MEMBER_INFO_VERSION_HOSTS {
            mailbox.relay.decode_alternates(&mut r)?;
            // One meaning, one encoding: a relay of one host is version 1.
            if mailbox.relay.alternates.is_empty() {
                return Err(DecodeError::InvalidValue("relay hosts"));
            }
        }
        r.finish()?;
        Ok(Self {
            name: name.to_owned(),
            mailbox,
        })
    }
}

/// A channel's rules, in its MLS group context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Signature public key of the member allowed to commit changes.
    pub admin: Vec<u8>,
    /// The channel's title, as its creator named it (members may name it otherwise
    /// locally).
    pub title: String,
    /// Messages are erased this many seconds after they were sent; 0 keeps them.
    pub disappearing_secs: u64,
    /// The channel ends at this time (milliseconds since the Unix epoch); 0 never.
    pub expires_at: u64,
}

impl ChannelPolicy {
    /// Encodes the extension body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(CHANNEL_POLICY_VERSION);
        w.bytes8(&self.admin);
        w.bytes8(self.title.as_bytes());
        w.u64(self.disappearing_secs);
        w.u64(self.expires_at);
        w.bytes
    }

    /// Decodes the extension body strictly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != CHANNEL_POLICY_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let admin = r.bytes8(255)?.to_vec();
        if admin.is_empty() {
            return Err(DecodeError::InvalidValue("administrator key"));
        }
        let title = r.str8(MAX_NAME_LEN)?;
        check_name(title).map_err(|_| DecodeError::InvalidValue("channel title"))?;
        let disappearing_secs = r.u64()?;
        let expires_at = r.u64()?;
        r.finish()?;
        Ok(Self {
            admin,
            title: title.to_owned(),
            disappearing_secs,
            expires_at,
        })
    }
}

/// Checks a display name: 1 to [`MAX_NAME_LEN`] bytes, in Unicode normal form C, not
/// only spaces, and free of anything a reader cannot see or that changes how text
/// around it is shown: control characters, format characters (zero-width spaces and
/// joiners, bidirectional overrides and isolates, soft hyphens), line and paragraph
/// separators, private-use, unassigned and invisible filler characters.
/// [`normalize_name`] turns typed text into the normal form first.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    use unicode_normalization::is_nfc;
    if name.trim().is_empty() {
        return Err("a name cannot be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("a name can have at most 64 bytes");
    }
    if name.chars().any(is_hidden) {
        return Err("a name cannot contain control, invisible or direction-changing characters");
    }
    if name != name.trim() {
        return Err("a name cannot start or end with a space");
    }
    if name.chars().any(|c| NAME_PUNCTUATION.contains(&c)) {
        return Err("a name cannot contain : [ ] ( ) or | (they frame names in what people read)");
    }
    if !is_nfc(name) {
        return Err("a name must be in Unicode normal form C");
    }
    Ok(())
}

/// Characters that frame a name in human output (`[time] name (unverified): text`,
/// continuation marks): a name containing them could pass for another header.
pub const NAME_PUNCTUATION: [char; 6] = [':', '[', ']', '(', ')', '|'];

/// Whether a character can control a terminal or change how the text around it is
/// shown without being seen itself: control characters (escape sequences start with
/// one), format characters (zero-width spaces and joiners, bidirectional overrides and
/// isolates), line and paragraph separators, private-use, unassigned and invisible
/// filler characters. Names may not contain them; people's text shows them escaped.
pub fn is_hidden(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate
            | GeneralCategory::Unassigned
    ) || INVISIBLE_LETTERS.contains(&c)
}

/// Letters and spaces Unicode classes as visible although they show as nothing
/// (Default_Ignorable_Code_Point outside the format category).
const INVISIBLE_LETTERS: [char; 6] = [
    '\u{115F}', // HANGUL CHOSEONG FILLER
    '\u{1160}', // HANGUL JUNGSEONG FILLER
    '\u{3164}', // HANGUL FILLER
    '\u{FFA0}', // HALFWIDTH HANGUL FILLER
    '\u{2800}', // BRAILLE PATTERN BLANK
    '\u{034F}', // COMBINING GRAPHEME JOINER
];

/// A typed name in the form [`check_name`] accepts where that is only a matter of
/// form: Unicode normal form C, surrounding spaces removed.
pub fn normalize_name(typed: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    typed.trim().nfc().collect()
}

/// What two names are compared by: their Unicode TR39 confusable skeletons, case
/// folded. "Alice", "alice" and "Аlice" (with a Cyrillic A) have one key, so a
/// channel cannot hold two members one could take for the other.
pub fn name_key(name: &str) -> String {
    let skeleton: String = unicode_security::skeleton(name).collect();
    skeleton.to_lowercase()
}

/// Whether two names could be taken for one another ([`name_key`]).
pub fn names_clash(a: &str, b: &str) -> bool {
    name_key(a) == name_key(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Fingerprint, MailboxId, RelayAddr};
    use proptest::prelude::*;

    fn info() -> MemberInfo {
        MemberInfo {
            name: "bo".into(),
            mailbox: MailboxAddr {
                relay: RelayAddr::new(Fingerprint([3; 32]), "r.example", 7443).unwrap(),
                send_id: MailboxId([4; 16]),
            },
        }
    }

    #[test]
    fn member_info_known_encoding() {
        let bytes = info().encode();
        let mut expected = vec![1, 2, b'b', b'o'];
        expected.extend([3; 32]);
        expected.push(9);
        expected.extend(b"r.example");
        expected.extend(7443u16.to_be_bytes());
        expected.extend([4; 16]);
        assert_eq!(bytes, expected);
        assert_eq!(MemberInfo::decode(&bytes).unwrap(), info());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            MemberInfo::decode(&trailing),
            Err(DecodeError::TrailingBytes)
        );
    }

    #[test]
    fn member_info_of_a_relay_with_several_hosts() {
        let mut several = info();
        several.mailbox.relay = RelayAddr::with_hosts(
            Fingerprint([3; 32]),
            &[("r.example", 7443), ("s.example", 7444)],
        )
        .unwrap();
        let bytes = several.encode();
        let mut expected = info().encode();
        expected[0] = 2;
        expected.push(1);
        expected.push(9);
        expected.extend(b"s.example");
        expected.extend(7444u16.to_be_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(MemberInfo::decode(&bytes).unwrap(), several);
        // Version 2 with no further host is not canonical.
        let mut empty = info().encode();
        empty[0] = 2;
        empty.push(0);
        assert!(MemberInfo::decode(&empty).is_err());
        // Nor a host twice, nor a host not in canonical form.
        let mut twice = info().encode();
        twice[0] = 2;
        twice.push(1);
        twice.push(9);
        twice.extend(b"r.example");
        twice.extend(7443u16.to_be_bytes());
        assert!(MemberInfo::decode(&twice).is_err());
        let mut upper = bytes.clone();
        let at = upper.len() - 11;
        upper[at] = b'S';
        assert!(MemberInfo::decode(&upper).is_err());
    }

    #[test]
    fn policy_known_encoding() {
        let policy = ChannelPolicy {
            admin: vec![8; 32],
            title: "ops".into(),
            disappearing_secs: 3600,
            expires_at: 0,
        };
        let bytes = policy.encode();
        assert_eq!(bytes.len(), 1 + 1 + 32 + 1 + 3 + 8 + 8);
        assert_eq!(&bytes[..2], &[1, 32]);
        assert_eq!(&bytes[34..38], &[3, b'o', b'p', b's']);
        assert_eq!(ChannelPolicy::decode(&bytes).unwrap(), policy);
        let mut no_admin = vec![1, 0];
        no_admin.extend([0; 17]);
        assert!(ChannelPolicy::decode(&no_admin).is_err());
        let mut no_title = bytes.clone();
        no_title[34] = 0;
        assert!(ChannelPolicy::decode(&no_title).is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("Zoë Ω").is_ok());
        assert!(check_name("Jean-Luc O'Neil").is_ok());
        assert!(check_name("  ").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
        for hidden in [
            "Alice\u{200B}",  // zero-width space
            "Ali\u{200D}ce",  // zero-width joiner
            "\u{202E}ecilA",  // right-to-left override
            "Alice\u{2066}",  // left-to-right isolate
            "Al\u{00AD}ice",  // soft hyphen
            "Alice\u{3164}",  // Hangul filler
            "Ali\u{034F}ce",  // combining grapheme joiner
            "Alice\u{2028}x", // line separator
            "Alice\u{E000}",  // private use
            "Alice\u{1b}[2K", // escape sequence
            " Alice",
            "Alice: pay now", // frames a header
            "[2026-11-28 23:59] alice",
            "bob (verified)",
            "x | y",
        ] {
            assert!(check_name(hidden).is_err(), "{hidden:?}");
        }
        // "e" followed by a combining acute: not normal form C until normalised.
        let decomposed = "Zoe\u{301}";
        assert!(check_name(decomposed).is_err());
        assert_eq!(normalize_name(decomposed), "Zo\u{e9}");
        assert!(check_name(&normalize_name(decomposed)).is_ok());
        assert_eq!(normalize_name("  bob \t"), "bob");
    }

    #[test]
    fn confusable_names_clash() {
        assert!(names_clash("Alice", "alice"));
        assert!(names_clash("Alice", "\u{410}lice")); // Cyrillic A
        assert!(names_clash("paypal", "p\u{430}yp\u{430}l")); // Cyrillic a
        assert!(names_clash("Bob", "B\u{43e}b")); // Cyrillic o
        assert!(names_clash("l1", "I1"));
        assert!(!names_clash("alice", "alicia"));
        assert!(!names_clash("bob", "rob"));
    }

    #[test]
    fn only_canonical_hosts_decode() {
        let mut bytes = info().encode();
        let at = bytes.iter().position(|&b| b == b'r').unwrap();
        bytes[at] = b'R';
        assert!(
            MemberInfo::decode(&bytes).is_err(),
            "an uppercase host is not canonical"
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = MemberInfo::decode(&bytes);
            let _ = ChannelPolicy::decode(&bytes);
        }
    }
}
