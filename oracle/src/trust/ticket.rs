//! Golden-ticket records, signed with the Oracle's ed25519 key (the key behind its peer id).
//!
//! A record names the Scout, the job (by the hash of everything the Scout was sent), the
//! Scout's answer and the reference's answer (by hash), the score and the verdict. The
//! signature covers a domain tag and the record's postcard bytes, so anyone holding the
//! Oracle's peer id can check a record offline (`shard-oracle tickets verify`), and the
//! Oracle cannot be made to disown, nor a Scout to forge, one.

use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use shard_shared::trust::{hex, unhex, unhex_bounded};
use shard_shared::wire::WireSampling;

use super::agreement::Agreement;
use super::auth::public_key_of;
use super::standing::Verdict;

/// The version of [`TicketRecord`]'s layout.
pub const RECORD_VERSION: u8 = 1;
const DOMAIN: &[u8] = b"shard-ticket/1\n";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRecord {
    pub version: u8,
    /// The Oracle's peer id, base58.
    pub oracle: String,
    /// The Scout's peer id, base58.
    pub peer: String,
    pub job_id: u64,
    pub job_sha256: [u8; 32],
    pub answer_sha256: [u8; 32],
    pub reference_sha256: [u8; 32],
    pub agreement: Agreement,
    pub verdict: Verdict,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// A record as stored and served: its bytes and the signature over them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedTicket {
    pub record: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TicketError {
    #[error("the record does not decode: {0}")]
    Malformed(String),
    #[error("record version {0}, this Shard reads {RECORD_VERSION}")]
    Version(u8),
    #[error("the record names Oracle {found}, not {expected}")]
    WrongOracle { found: String, expected: String },
    #[error("the Oracle's peer id does not carry an ed25519 key")]
    KeyType,
    #[error("the signature does not verify against the Oracle's key")]
    BadSignature,
}

/// What a Scout was sent, as one hash: context, k, sampling, seed and model.
pub fn job_hash(context: &[u32], k: u8, sampling: &WireSampling, seed: u64, model_sha256: &[u8; 32]) -> [u8; 32] {
    let bytes = postcard::to_allocvec(&(context, k, sampling, seed, model_sha256)).expect("job fields serialize");
    Sha256::digest(bytes).into()
}

/// The hash of a token list (an answer).
pub fn tokens_hash(tokens: &[u32]) -> [u8; 32] {
    Sha256::digest(postcard::to_allocvec(tokens).expect("tokens serialize")).into()
}

fn signed_bytes(record: &[u8]) -> Vec<u8> {
    [DOMAIN, record].concat()
}

impl SignedTicket {
    pub fn sign(record: &TicketRecord, key: &Keypair) -> Self {
        let bytes = postcard::to_allocvec(record).expect("records serialize");
        let signature = key.sign(&signed_bytes(&bytes)).expect("ed25519 keys sign");
        Self { record: bytes, signature }
    }

    /// The record, once its signature checks out against the Oracle `oracle` (base58 peer id).
    pub fn verify(&self, oracle: &str) -> Result<TicketRecord, TicketError> {
        let record: TicketRecord = postcard::from_bytes(&self.record).map_err(|e| TicketError::Malformed(e.to_string()))?;
        if record.version != RECORD_VERSION {
            return Err(TicketError::Version(record.version));
        }
        if record.oracle != oracle {
            return Err(TicketError::WrongOracle { found: record.oracle, expected: oracle.into() });
        }
        let peer: PeerId = oracle.parse().map_err(|_| TicketError::KeyType)?;
        let key = public_key_of(&peer).ok_or(TicketError::KeyType)?;
        if !key.verify(&signed_bytes(&self.record), &self.signature) {
            return Err(TicketError::BadSignature);
        }
        Ok(record)
    }
}

/// A record as `GET /api/trust/tickets` serves it: the fields, readable, and the signed bytes
/// with their signature, which [`TicketView::verify`] checks against the fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketView {
    pub peer_id: String,
    pub job_id: u64,
    pub job_sha256: String,
    pub answer_sha256: String,
    pub reference_sha256: String,
    pub positions: u32,
    pub counted: u32,
    pub agreed: u32,
    /// Disagreements no float noise explains (`docs/security/golden-tickets.md`).
    pub decisive: u32,
    pub verdict: Verdict,
    pub at_ms: u64,
    /// The signed record (postcard), hex.
    pub record: String,
    /// ed25519 over `shard-ticket/1\n` + the record, hex.
    pub signature: String,
}

/// Longest record accepted from a served list (they are about 200 bytes).
const MAX_RECORD_BYTES: usize = 4096;

impl TicketView {
    pub fn new(signed: &SignedTicket, r: &TicketRecord) -> Self {
        Self {
            peer_id: r.peer.clone(),
            job_id: r.job_id,
            job_sha256: hex(&r.job_sha256),
            answer_sha256: hex(&r.answer_sha256),
            reference_sha256: hex(&r.reference_sha256),
            positions: r.agreement.positions,
            counted: r.agreement.counted,
            agreed: r.agreement.agreed,
            decisive: r.agreement.decisive,
            verdict: r.verdict,
            at_ms: r.at_ms,
            record: hex(&signed.record),
            signature: hex(&signed.signature),
        }
    }

    /// Checks the signature against the Oracle `oracle`, and that the readable fields are the
    /// signed ones.
    pub fn verify(&self, oracle: &str) -> Result<TicketRecord, String> {
        let signed = SignedTicket {
            record: unhex_bounded(&self.record, MAX_RECORD_BYTES).ok_or("the record is not hex of at most 4 KiB")?,
            signature: unhex::<64>(&self.signature).ok_or("the signature is not 128 hex digits")?.to_vec(),
        };
        let r = signed.verify(oracle).map_err(|e| e.to_string())?;
        if TicketView::new(&signed, &r) != *self {
            return Err("the fields shown differ from the signed record".into());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(oracle: &Keypair) -> TicketRecord {
        TicketRecord {
            version: RECORD_VERSION,
            oracle: oracle.public().to_peer_id().to_string(),
            peer: PeerId::random().to_string(),
            job_id: 7,
            job_sha256: job_hash(&[1, 2, 3], 4, &WireSampling { temperature: 0.0, top_k: 0, top_p: 1.0 }, 9, &[0; 32]),
            answer_sha256: tokens_hash(&[4, 5]),
            reference_sha256: tokens_hash(&[4, 6]),
            agreement: Agreement { positions: 2, counted: 2, agreed: 1, decisive: 1 },
            verdict: Verdict::Fail,
            at_ms: 1,
        }
    }

    #[test]
    fn records_verify_and_tampering_is_caught() {
        let key = Keypair::generate_ed25519();
        let oracle = key.public().to_peer_id().to_string();
        let r = record(&key);
        let signed = SignedTicket::sign(&r, &key);
        assert_eq!(signed.verify(&oracle).unwrap(), r);
        let mut tampered = signed.clone();
        let last = tampered.record.len() - 1;
        tampered.record[last] ^= 1;
        assert!(tampered.verify(&oracle).is_err());
        let other = Keypair::generate_ed25519();
        assert!(matches!(signed.verify(&other.public().to_peer_id().to_string()), Err(TicketError::WrongOracle { .. })));
        // Signed by another key but naming this Oracle: the signature fails.
        let forged = SignedTicket::sign(&r, &other);
        assert_eq!(forged.verify(&oracle), Err(TicketError::BadSignature));
        // The served form verifies, and a changed field is caught.
        let view = TicketView::new(&signed, &r);
        assert_eq!(view.verify(&oracle).unwrap(), r);
        let lie = TicketView { verdict: Verdict::Pass, ..view.clone() };
        assert!(lie.verify(&oracle).is_err());
        assert!(TicketView { record: "zz".into(), ..view }.verify(&oracle).is_err());
        // Junk never panics.
        let junk = SignedTicket { record: vec![0xff; 40], signature: vec![1; 3] };
        assert!(junk.verify(&oracle).is_err());
    }
}
