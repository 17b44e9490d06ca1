#![no_main]
use backchannel_proto::addr::RelayAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(addr) = text.parse::<RelayAddr>() {
            // The canonical form parses back to the same address.
            assert_eq!(addr.to_string().parse::<RelayAddr>().expect("canonical"), addr);
        }
    }
});
