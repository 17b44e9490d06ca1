#![no_main]
use backchannel_proto::envelope::{FRAGMENT_LEN, Fragment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Pad or cut to the one size fragments have, so the fuzzer explores fields.
    let mut bytes = data.to_vec();
    bytes.resize(FRAGMENT_LEN, 0);
    if let Ok(fragment) = Fragment::decode(&bytes) {
        assert_eq!(fragment.encode().to_vec(), bytes);
        let _ = Fragment::join(&[fragment.clone(), fragment]);
    }
    let _ = Fragment::decode(data);
});
