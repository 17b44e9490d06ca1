#![no_main]
use backchannel_proto::link::{InviteLink, JoinReply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The binary form: what decodes re-encodes to the same bytes.
    if let Ok(link) = InviteLink::decode(data) {
        assert_eq!(link.encode(), data);
    }
    if let Ok(reply) = JoinReply::decode(data) {
        assert_eq!(reply.encode(), data);
    }
    // The text form: the canonical text parses back to the same link.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(link) = text.parse::<InviteLink>() {
            assert_eq!(link.to_string().parse::<InviteLink>().expect("canonical"), link);
        }
    }
});
