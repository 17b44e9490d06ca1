#![no_main]
use backchannel_proto::payload::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((payload, unpadded)) = Payload::decode(data) {
        // Whatever decodes re-encodes to the same bytes.
        let again = payload.encode().expect("a decoded payload encodes");
        assert_eq!(again, data);
        assert_eq!(&data[..unpadded], &payload.encode_unpadded().expect("encodes")[..]);
    }
});
