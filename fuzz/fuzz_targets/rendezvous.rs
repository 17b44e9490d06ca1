#![no_main]
use backchannel_proto::rendezvous::{Offer, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(wire) = Wire::decode(data) {
        assert_eq!(Wire::decode(&wire.encode()).expect("re-encoded"), wire);
    }
    if let Ok(offer) = Offer::decode(data) {
        assert_eq!(Offer::decode(&offer.encode()).expect("re-encoded"), offer);
    }
});
