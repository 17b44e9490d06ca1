#![no_main]
use backchannel_proto::code::InviteCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(code) = text.parse::<InviteCode>() {
            // The canonical form parses back to the same code.
            assert_eq!(code.to_string().parse::<InviteCode>().expect("canonical"), code);
        }
    }
});
