//! Who a request is from, proven by what it carries in `Authorization: Bearer`, never by a
//! header the client sets for itself.
//!
//! * An operator key (`sk-shard-…`, made by `shard-oracle keys add`): the Oracle tier.
//! * A Scout proof (`shard1.…`, [`shard_shared::trust::ScoutProof`]): an ed25519 signature by
//!   the key behind the Scout's peer id, over this Oracle's peer id, a time within a minute of
//!   the Oracle's clock and a nonce never seen before. It names the peer; its standing decides
//!   the tier.
//! * Nothing: anonymous.
//!
//! Anything else in the header is refused with 401 once the operator has made a key (as
//! llama.cpp's server does with `--api-key`); before that, unknown bearer values are ignored,
//! so clients that must send some key (the official `openai` client) work anonymously.

use std::collections::HashMap;
use std::sync::Mutex;

use libp2p::identity::PublicKey;
use libp2p::PeerId;
use shard_shared::trust::{ProofError, ScoutProof, PROOF_WINDOW_MS};

use super::store::KEY_PREFIX;

/// Nonces remembered at most (two windows of proofs); past this, proofs are refused until old
/// ones expire, so a flood cannot grow memory.
const MAX_NONCES: usize = 1 << 20;

/// What an `Authorization` header says, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    None,
    OperatorKey(String),
    Scout(ScoutProof),
    /// A bearer value that is neither.
    Other,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("the Authorization header must be `Bearer <key>`")]
    Malformed,
    #[error("unknown or revoked API key")]
    BadKey,
    #[error("invalid Scout proof: {0}")]
    Proof(#[from] ProofError),
    #[error("the trust store failed: {0}")]
    Store(String),
}

/// Reads an `Authorization` header value (bounded: a value over 1 KiB is malformed).
pub fn parse_header(value: Option<&[u8]>) -> Result<Credential, AuthError> {
    let Some(raw) = value else { return Ok(Credential::None) };
    if raw.len() > 1024 {
        return Err(AuthError::Malformed);
    }
    let text = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
    let token = match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(AuthError::Malformed),
    };
    if token.is_empty() {
        return Ok(Credential::None);
    }
    if token.starts_with(KEY_PREFIX) {
        return Ok(Credential::OperatorKey(token.to_string()));
    }
    match ScoutProof::parse(token) {
        Ok(p) => Ok(Credential::Scout(p)),
        Err(ProofError::NotAProof) => Ok(Credential::Other),
        Err(e) => Err(e.into()),
    }
}

/// The ed25519 key inside a peer id (ed25519 peer ids inline their key).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    (mh.code() == 0).then(|| PublicKey::try_decode_protobuf(mh.digest()).ok()).flatten()
}

/// Checks Scout proofs for one Oracle, remembering the nonces it has seen.
pub struct ProofVerifier {
    oracle_peer_id: String,
    seen: Mutex<HashMap<[u8; 16], u64>>,
}

impl ProofVerifier {
    pub fn new(oracle_peer_id: String) -> Self {
        Self { oracle_peer_id, seen: Mutex::new(HashMap::new()) }
    }

    pub fn oracle_peer_id(&self) -> &str {
        &self.oracle_peer_id
    }

    /// The peer a proof proves, at `now_ms`; each proof is good once.
    pub fn verify(&self, proof: &ScoutProof, now_ms: u64) -> Result<PeerId, ProofError> {
        proof.check_time(now_ms)?;
        let peer: PeerId = proof.peer_id.parse().map_err(|_| ProofError::PeerId)?;
        let key = public_key_of(&peer).ok_or(ProofError::KeyType)?;
        let message = ScoutProof::signed_bytes(&self.oracle_peer_id, &proof.peer_id, proof.time_ms, &proof.nonce);
        if !key.verify(&message, &proof.signature) {
            return Err(ProofError::BadSignature);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // A nonce can only replay within the window, so older ones can be forgotten.
        if seen.len() >= MAX_NONCES / 2 {
            seen.retain(|_, &mut t| t.abs_diff(now_ms) <= 2 * PROOF_WINDOW_MS);
        }
        if seen.len() >= MAX_NONCES {
            return Err(ProofError::Replayed);
        }
        if seen.insert(proof.nonce, proof.time_ms).is_some() {
            return Err(ProofError::Replayed);
        }
        Ok(peer)
    }
}

pub use shard_shared::trust::sign_proof;

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    const ORACLE: &str = "12D3KooWLyV6m3TSaGvpWNDcaPoBWKjo1CGYEKvW3ypwZqb4f6xq";

    fn header(token: &str) -> Result<Credential, AuthError> {
        parse_header(Some(format!("Bearer {token}").as_bytes()))
    }

    #[test]
    fn a_proof_verifies_once_and_only_for_its_oracle() {
        let key = Keypair::generate_ed25519();
        let v = ProofVerifier::new(ORACLE.into());
        let now = 1_800_000_000_000;
        let token = sign_proof(&key, ORACLE, now, [1; 16]);
        let Credential::Scout(proof) = header(&token).unwrap() else { panic!("a Scout proof") };
        assert_eq!(v.verify(&proof, now + 1000).unwrap(), key.public().to_peer_id());
        assert_eq!(v.verify(&proof, now + 2000), Err(ProofError::Replayed));
        let other = ProofVerifier::new("12D3KooWAnotherOracle".into());
        let fresh = sign_proof(&key, ORACLE, now, [2; 16]);
        let Credential::Scout(p2) = header(&fresh).unwrap() else { panic!() };
        assert_eq!(other.verify(&p2, now), Err(ProofError::BadSignature), "made for another Oracle");
        let late = sign_proof(&key, ORACLE, now - 61_000, [3; 16]);
        let Credential::Scout(p3) = header(&late).unwrap() else { panic!() };
        assert_eq!(v.verify(&p3, now), Err(ProofError::Expired));
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let (key, thief) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let now = 1_800_000_000_000;
        let theirs = sign_proof(&thief, ORACLE, now, [4; 16]);
        let Credential::Scout(mut proof) = header(&theirs).unwrap() else { panic!() };
        proof.peer_id = key.public().to_peer_id().to_string();
        assert_eq!(ProofVerifier::new(ORACLE.into()).verify(&proof, now), Err(ProofError::BadSignature));
    }

    #[test]
    fn headers_are_read_strictly() {
        assert_eq!(parse_header(None), Ok(Credential::None));
        assert_eq!(header(""), Ok(Credential::None));
        assert_eq!(header("not-needed"), Ok(Credential::Other));
        assert!(matches!(header("sk-shard-00"), Ok(Credential::OperatorKey(_))));
        assert_eq!(parse_header(Some(b"Basic abc")), Err(AuthError::Malformed));
        assert_eq!(parse_header(Some(&[0xff, 0xfe])), Err(AuthError::Malformed));
        assert_eq!(parse_header(Some(&[b'a'; 2000])), Err(AuthError::Malformed));
        assert!(matches!(header("shard1.0OIl.1.2.3"), Err(AuthError::Proof(_))));
    }
}
