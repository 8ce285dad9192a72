//! Every wire decoder on arbitrary bytes: each must return a message or an error, never panic,
//! hang or allocate beyond the frame. A decoded message must re-encode to a frame that decodes
//! to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_shared::wire::{decode, encode, Bounded, DraftJob, DraftReply, Hello, LoadAnnouncement, Topology, Welcome};

fn check<T: serde::de::DeserializeOwned + serde::Serialize + Bounded + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(msg) = decode::<T>(data) {
        let again: T = decode(&encode(&msg)).expect("a decoded message re-encodes");
        assert_eq!(again, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<DraftJob>(data);
    check::<DraftReply>(data);
    check::<Hello>(data);
    check::<Welcome>(data);
    check::<LoadAnnouncement>(data);
    check::<Topology>(data);
});
