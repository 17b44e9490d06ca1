#![no_main]
use backchannel_proto::member::ChannelPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = ChannelPolicy::decode(data) {
        assert_eq!(policy.encode(), data);
    }
});
