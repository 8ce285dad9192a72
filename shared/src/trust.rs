//! Trust vocabulary shared by the Oracle and the web app: priority tiers, queue states, and
//! the signed proof a Scout sends to show which identity it is.
//!
//! A Scout proves its identity over HTTP with an ed25519 signature by the key behind its
//! libp2p peer id, in `Authorization: Bearer <proof>`:
//!
//! ```text
//! shard1.<peer id, base58>.<unix time, ms>.<nonce, 32 hex>.<signature, 128 hex>
//! ```
//!
//! The signature covers [`ScoutProof::signed_bytes`]: a domain tag, the Oracle's own peer id
//! (so a proof made for one Oracle is worthless at another), the Scout's peer id, the time and
//! the nonce. The Oracle accepts a proof once (the nonce), and only within a short window of
//! its clock. Parsing is bounded: every field has a fixed alphabet and a length cap, so a
//! hostile header costs nothing to refuse. Signing and verifying live with the key types (the
//! Scout and the Oracle); this module only spells the proof.

use serde::{Deserialize, Serialize};

/// Who a request is served as, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// An operator API key.
    Oracle,
    /// A Scout's proven identity, in good standing and with credits.
    Scout,
    /// Anyone.
    Leech,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Oracle, Tier::Scout, Tier::Leech];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Oracle => "oracle",
            Tier::Scout => "scout",
            Tier::Leech => "leech",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a queued request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    Waiting,
    Running,
    Done,
}

/// The prefix of a Scout proof.
pub const PROOF_PREFIX: &str = "shard1.";
/// How far a proof's time may be from the Oracle's clock, either way.
pub const PROOF_WINDOW_MS: u64 = 60_000;
/// Longest base58 peer id accepted (an ed25519 peer id is 52 characters).
const MAX_PEER_ID_CHARS: usize = 64;
const NONCE_HEX: usize = 32;
const SIGNATURE_HEX: usize = 128;

/// A Scout's identity proof, as parsed from its header (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoutProof {
    /// The Scout's peer id, base58 as libp2p prints it.
    pub peer_id: String,
    pub time_ms: u64,
    pub nonce: [u8; 16],
    pub signature: [u8; 64],
}

/// Why a proof is refused; each is a 401 at the Oracle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("not a Shard proof (it must start with {PROOF_PREFIX:?})")]
    NotAProof,
    #[error("a proof has five dot-separated fields")]
    Shape,
    #[error("the peer id is not base58 of at most {MAX_PEER_ID_CHARS} characters")]
    PeerId,
    #[error("the time is not a number of milliseconds")]
    Time,
    #[error("the nonce is not {NONCE_HEX} hex digits")]
    Nonce,
    #[error("the signature is not {SIGNATURE_HEX} hex digits")]
    SignatureEncoding,
    #[error("the proof's time is more than {} s from the Oracle's clock", PROOF_WINDOW_MS / 1000)]
    Expired,
    #[error("the proof was already used")]
    Replayed,
    #[error("the signature does not verify against the peer id's key")]
    BadSignature,
    #[error("the peer id does not carry an ed25519 key")]
    KeyType,
}

impl ScoutProof {
    /// What the Scout signs for the Oracle `oracle_peer_id`.
    pub fn signed_bytes(oracle_peer_id: &str, peer_id: &str, time_ms: u64, nonce: &[u8; 16]) -> Vec<u8> {
        format!("shard-auth/1\noracle {oracle_peer_id}\nscout {peer_id}\ntime {time_ms}\nnonce {}\n", hex(nonce)).into_bytes()
    }

    /// The header value for a signature made over [`ScoutProof::signed_bytes`].
    pub fn encode(peer_id: &str, time_ms: u64, nonce: &[u8; 16], signature: &[u8; 64]) -> String {
        format!("{PROOF_PREFIX}{peer_id}.{time_ms}.{}.{}", hex(nonce), hex(signature))
    }

    /// Parses a bearer token; [`ProofError::NotAProof`] when it is not a Shard proof at all.
    pub fn parse(token: &str) -> Result<Self, ProofError> {
        let rest = token.strip_prefix(PROOF_PREFIX).ok_or(ProofError::NotAProof)?;
        if rest.len() > MAX_PEER_ID_CHARS + 21 + NONCE_HEX + SIGNATURE_HEX + 3 {
            return Err(ProofError::Shape);
        }
        let fields: Vec<&str> = rest.split('.').collect();
        let [peer_id, time, nonce, signature] = fields[..] else { return Err(ProofError::Shape) };
        const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
        if peer_id.is_empty() || peer_id.len() > MAX_PEER_ID_CHARS || !peer_id.chars().all(|c| BASE58.contains(c)) {
            return Err(ProofError::PeerId);
        }
        if time.is_empty() || time.len() > 20 || !time.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProofError::Time);
        }
        let time_ms = time.parse().map_err(|_| ProofError::Time)?;
        let nonce = unhex::<16>(nonce).ok_or(ProofError::Nonce)?;
        let signature = unhex::<64>(signature).ok_or(ProofError::SignatureEncoding)?;
        Ok(Self { peer_id: peer_id.to_string(), time_ms, nonce, signature })
    }

    /// Whether the proof's time is within [`PROOF_WINDOW_MS`] of `now_ms`.
    pub fn check_time(&self, now_ms: u64) -> Result<(), ProofError> {
        if self.time_ms.abs_diff(now_ms) > PROOF_WINDOW_MS {
            return Err(ProofError::Expired);
        }
        Ok(())
    }
}

/// Signs a proof for the Oracle `oracle_peer_id` with the Scout's `key`, made at `time_ms`
/// with a fresh random `nonce`: the header value to send as `Authorization: Bearer`.
#[cfg(feature = "p2p")]
pub fn sign_proof(key: &libp2p::identity::Keypair, oracle_peer_id: &str, time_ms: u64, nonce: [u8; 16]) -> String {
    let peer = key.public().to_peer_id().to_string();
    let message = ScoutProof::signed_bytes(oracle_peer_id, &peer, time_ms, &nonce);
    let sig: [u8; 64] = key.sign(&message).expect("ed25519 signs").try_into().expect("ed25519 signatures are 64 bytes");
    ScoutProof::encode(&peer, time_ms, &nonce, &sig)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes from `2N` lowercase or uppercase hex digits.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    unhex_bounded(s, N)?.try_into().ok()
}

/// At most `max` bytes from an even number of hex digits.
pub fn unhex_bounded(s: &str, max: usize) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 2 * max || !s.is_ascii() {
        return None;
    }
    s.as_bytes().chunks_exact(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PEER: &str = "12D3KooWLyV6m3TSaGvpWNDcaPoBWKjo1CGYEKvW3ypwZqb4f6xq";

    #[test]
    fn round_trips() {
        let token = ScoutProof::encode(PEER, 1_700_000_000_000, &[7; 16], &[9; 64]);
        let p = ScoutProof::parse(&token).unwrap();
        assert_eq!((p.peer_id.as_str(), p.time_ms, p.nonce, p.signature), (PEER, 1_700_000_000_000, [7; 16], [9; 64]));
        assert!(p.check_time(1_700_000_030_000).is_ok());
        assert_eq!(p.check_time(1_700_000_070_001), Err(ProofError::Expired));
    }

    #[test]
    fn bad_fields_get_their_own_error() {
        let good = ScoutProof::encode(PEER, 5, &[1; 16], &[2; 64]);
        assert_eq!(ScoutProof::parse("sk-shard-abc"), Err(ProofError::NotAProof));
        assert_eq!(ScoutProof::parse("shard1.a.b"), Err(ProofError::Shape));
        assert_eq!(ScoutProof::parse(&good.replace(PEER, "0OIl")), Err(ProofError::PeerId));
        assert_eq!(ScoutProof::parse(&good.replace(PEER, &"z".repeat(65))), Err(ProofError::PeerId));
        assert_eq!(ScoutProof::parse(&good.replacen(".5.", ".-5.", 1)), Err(ProofError::Time));
        assert_eq!(ScoutProof::parse(&good.replace(&hex(&[1; 16]), "xyz")), Err(ProofError::Nonce));
        assert_eq!(ScoutProof::parse(&good.replace(&hex(&[2; 64]), &"g".repeat(128))), Err(ProofError::SignatureEncoding));
        assert_eq!(ScoutProof::parse(&format!("{good}{}", "0".repeat(1000))), Err(ProofError::Shape));
    }

    #[test]
    fn tiers_order_and_spell() {
        assert!(Tier::Oracle < Tier::Scout && Tier::Scout < Tier::Leech);
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,400}") {
            let _ = ScoutProof::parse(&s);
            let _ = ScoutProof::parse(&format!("{PROOF_PREFIX}{s}"));
        }
    }
}
