//! Fuzzes what reads credentials from a request: the `Authorization` header, the Scout proof
//! inside it, and the proof's verification. None of it may panic, and nothing malformed may
//! verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_oracle::trust::auth::{parse_header, Credential, ProofVerifier};

fuzz_target!(|data: &[u8]| {
    let verifier = ProofVerifier::new("12D3KooWLyV6m3TSaGvpWNDcaPoBWKjo1CGYEKvW3ypwZqb4f6xq".into());
    for header in [data.to_vec(), [b"Bearer ".as_slice(), data].concat(), [b"Bearer shard1.".as_slice(), data].concat()] {
        if let Ok(Credential::Scout(proof)) = parse_header(Some(&header)) {
            // No signature over fuzzer bytes can be valid for a fixed key it does not hold.
            assert!(verifier.verify(&proof, proof.time_ms).is_err());
        }
    }
});
