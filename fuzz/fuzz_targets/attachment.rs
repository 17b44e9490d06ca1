#![no_main]
use backchannel_proto::attachment::{Descriptor, blobs_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(descriptor) = Descriptor::decode(data) {
        assert_eq!(descriptor.encode(), data);
        assert_eq!(descriptor.blobs(), blobs_for(descriptor.size));
    }
});
