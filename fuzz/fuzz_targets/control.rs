#![no_main]
use backchannel_proto::control::Control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whatever decodes re-encodes to the same bytes.
    if let Ok(control) = Control::decode(data) {
        assert_eq!(control.encode(), data);
    }
});
