#![no_main]
use backchannel_proto::member::MemberInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = MemberInfo::decode(data) {
        assert_eq!(info.encode(), data);
    }
});
