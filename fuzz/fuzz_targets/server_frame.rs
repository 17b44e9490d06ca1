#![no_main]
use backchannel_proto::frame::{FRAME_LEN, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    bytes.resize(FRAME_LEN, 0);
    if let Ok(frame) = ServerFrame::decode(&bytes) {
        assert_eq!(frame.encode(), bytes);
    }
    let _ = ServerFrame::decode(data);
});
