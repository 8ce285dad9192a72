//! Shard's peer-to-peer messages and their codec (the protocol is in `docs/protocol.md`).
//!
//! Every message is a frame: a 2-byte little-endian protocol version, then the postcard
//! encoding of the message. Decoding refuses, with a [`WireError`] and no panic, any frame
//! that is over its size bound, of another version, malformed, or whose fields break the
//! bounds below; peers that send one are dropped and penalised.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sampling::SamplingParams;

/// The version every frame starts with. A change to any message bumps it.
pub const PROTOCOL_VERSION: u16 = 1;
/// Request-response protocol for draft jobs (Oracle asks, Scout answers).
pub const DRAFT_PROTOCOL: &str = "/shard/draft/2";
/// Request-response protocol a Scout uses to introduce itself to an Oracle.
pub const HELLO_PROTOCOL: &str = "/shard/hello/1";
/// gossipsub topic for Oracle load announcements.
pub const LOAD_TOPIC: &str = "shard/load/1";
/// gossipsub topic for the swarm's topology (peers and roles).
pub const TOPOLOGY_TOPIC: &str = "shard/topology/1";

/// Largest frame of any kind, in bytes.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Longest context a job may carry (full or appended).
pub const MAX_CONTEXT_TOKENS: usize = 16 * 1024;
/// Most tokens one job may ask for.
pub const MAX_DRAFT_TOKENS: usize = 32;
/// Longest string field (model ids, agent names).
pub const MAX_STRING: usize = 256;
/// Most peers in one topology message.
pub const MAX_PEERS: usize = 256;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte bound")]
    TooLarge(usize),
    #[error("frame too short for a version")]
    Truncated,
    #[error("protocol version {0}, this peer speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message breaks a bound: {0}")]
    Bounds(String),
}

/// The draft model a job is for: Scouts holding another file refuse the job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    pub id: String,
    pub sha256: [u8; 32],
}

/// The tokens a job continues from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Context {
    /// The whole context.
    Full(Vec<u32>),
    /// The Scout's context of its last job for the same sequence (`base_job`), cut to `keep`
    /// tokens, then `append`. A Scout without that base refuses with [`Refusal::UnknownBase`].
    Delta { base_job: u64, keep: u32, append: Vec<u32> },
}

impl Context {
    /// Tokens carried on the wire.
    pub fn carried(&self) -> usize {
        match self {
            Context::Full(t) => t.len(),
            Context::Delta { append, .. } => append.len(),
        }
    }
}

/// Sampling settings, as far as a draft needs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
}

impl From<&SamplingParams> for WireSampling {
    fn from(p: &SamplingParams) -> Self {
        Self { temperature: p.temperature, top_k: p.top_k.min(u32::MAX as usize) as u32, top_p: p.top_p }
    }
}

impl From<&WireSampling> for SamplingParams {
    fn from(w: &WireSampling) -> Self {
        SamplingParams { temperature: w.temperature, top_k: w.top_k as usize, top_p: w.top_p, ..SamplingParams::default() }
    }
}

/// Oracle → Scout on [`DRAFT_PROTOCOL`]: propose up to `k` tokens after `context`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftJob {
    pub job_id: u64,
    /// The sequence the job belongs to; deltas are relative to the last job of it.
    pub sequence: u64,
    pub context: Context,
    pub k: u8,
    pub sampling: WireSampling,
    pub seed: u64,
    pub model: ModelRef,
}

/// Why a Scout did not draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// A delta named a base job the Scout does not hold; resend the full context.
    UnknownBase,
    /// The job is for a model the Scout does not hold.
    WrongModel,
    /// The context does not fit the draft model, or names tokens outside its vocabulary.
    BadContext,
    /// The Scout is paused (a hidden tab) or overloaded.
    Busy,
}

/// Scout → Oracle, the answer to a [`DraftJob`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftReply {
    pub job_id: u64,
    pub outcome: DraftOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DraftOutcome {
    /// Drafted tokens and, optionally, the probability the draft model gave each (for
    /// statistics only: the Oracle's acceptance never trusts a remote peer's numbers).
    Drafted {
        tokens: Vec<u32>,
        probs: Option<Vec<f32>>,
    },
    Refused(Refusal),
}

/// Scout → Oracle on [`HELLO_PROTOCOL`]: what the Scout can draft with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub model: ModelRef,
    /// "gpu (wgpu)" or "cpu (ndarray)", for the network view.
    pub backend: String,
    /// The Scout's software, e.g. "shard-scout/0.1.0 native".
    pub agent: String,
}

/// Oracle → Scout, the answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Welcome {
    Accepted {
        oracle_model: String,
    },
    /// Not accepted, and why (wrong model, banned...).
    Refused {
        reason: String,
    },
}

/// Oracle load, on [`LOAD_TOPIC`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadAnnouncement {
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub tokens_per_s: f32,
    pub scouts: u32,
    pub draft_model: Option<ModelRef>,
}

/// One peer in a [`Topology`] message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerSummary {
    pub peer_id: String,
    pub role: String,
    pub transport: String,
}

/// The swarm as the Oracle sees it, on [`TOPOLOGY_TOPIC`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub peers: Vec<PeerSummary>,
}

/// What a message must satisfy beyond parsing.
pub trait Bounded {
    fn check(&self) -> Result<(), WireError>;
}

fn bound(ok: bool, what: impl FnOnce() -> String) -> Result<(), WireError> {
    if ok {
        Ok(())
    } else {
        Err(WireError::Bounds(what()))
    }
}

impl Bounded for ModelRef {
    fn check(&self) -> Result<(), WireError> {
        bound(self.id.len() <= MAX_STRING, || format!("model id of {} bytes", self.id.len()))
    }
}

impl Bounded for DraftJob {
    fn check(&self) -> Result<(), WireError> {
        bound(self.context.carried() <= MAX_CONTEXT_TOKENS, || format!("context of {} tokens", self.context.carried()))?;
        if let Context::Full(t) = &self.context {
            bound(!t.is_empty(), || "empty context".into())?;
        }
        if let Context::Delta { keep, .. } = &self.context {
            bound((*keep as usize) <= MAX_CONTEXT_TOKENS, || format!("delta keeps {keep} tokens"))?;
        }
        bound((1..=MAX_DRAFT_TOKENS).contains(&(self.k as usize)), || format!("k = {}", self.k))?;
        let s = &self.sampling;
        bound(s.temperature.is_finite() && s.temperature >= 0.0, || format!("temperature {}", s.temperature))?;
        bound(s.top_p.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0, || format!("top_p {}", s.top_p))?;
        self.model.check()
    }
}

impl Bounded for DraftReply {
    fn check(&self) -> Result<(), WireError> {
        if let DraftOutcome::Drafted { tokens, probs } = &self.outcome {
            bound(tokens.len() <= MAX_DRAFT_TOKENS, || format!("{} drafted tokens", tokens.len()))?;
            if let Some(p) = probs {
                bound(p.len() == tokens.len(), || format!("{} probabilities for {} tokens", p.len(), tokens.len()))?;
                bound(p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), || "probability outside [0, 1]".into())?;
            }
        }
        Ok(())
    }
}

impl Bounded for Hello {
    fn check(&self) -> Result<(), WireError> {
        bound(self.backend.len() <= MAX_STRING && self.agent.len() <= MAX_STRING, || "string field too long".into())?;
        self.model.check()
    }
}

impl Bounded for Welcome {
    fn check(&self) -> Result<(), WireError> {
        let n = match self {
            Welcome::Accepted { oracle_model } => oracle_model.len(),
            Welcome::Refused { reason } => reason.len(),
        };
        bound(n <= MAX_STRING, || "string field too long".into())
    }
}

impl Bounded for LoadAnnouncement {
    fn check(&self) -> Result<(), WireError> {
        bound(self.tokens_per_s.is_finite() && self.tokens_per_s >= 0.0, || "tokens_per_s".into())?;
        self.draft_model.as_ref().map_or(Ok(()), |m| m.check())
    }
}

impl Bounded for Topology {
    fn check(&self) -> Result<(), WireError> {
        bound(self.peers.len() <= MAX_PEERS, || format!("{} peers", self.peers.len()))?;
        bound(
            self.peers
                .iter()
                .all(|p| p.peer_id.len() <= MAX_STRING && p.role.len() <= MAX_STRING && p.transport.len() <= MAX_STRING),
            || "string field too long".into(),
        )
    }
}

/// Encodes a message as a versioned frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = PROTOCOL_VERSION.to_le_bytes().to_vec();
    // postcard cannot fail on these types (no maps with non-string keys, no unsized data).
    out.extend(postcard::to_allocvec(msg).expect("postcard encodes every wire type"));
    out
}

/// Decodes and checks a versioned frame. Allocation is bounded by the frame's length.
pub fn decode<T: DeserializeOwned + Bounded>(frame: &[u8]) -> Result<T, WireError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(frame.len()));
    }
    let (version, body) = frame.split_first_chunk::<2>().ok_or(WireError::Truncated)?;
    let version = u16::from_le_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    msg.check()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model() -> ModelRef {
        ModelRef { id: "shard-draft".into(), sha256: [7; 32] }
    }

    fn job(context: Context) -> DraftJob {
        DraftJob {
            job_id: 9,
            sequence: 3,
            context,
            k: 4,
            sampling: WireSampling { temperature: 0.0, top_k: 0, top_p: 1.0 },
            seed: 1,
            model: model(),
        }
    }

    #[test]
    fn round_trips() {
        for j in [job(Context::Full(vec![1, 2, 3])), job(Context::Delta { base_job: 8, keep: 2, append: vec![5] })] {
            assert_eq!(decode::<DraftJob>(&encode(&j)).unwrap(), j);
        }
        let r = DraftReply { job_id: 9, outcome: DraftOutcome::Drafted { tokens: vec![4, 5], probs: Some(vec![0.5, 1.0]) } };
        assert_eq!(decode::<DraftReply>(&encode(&r)).unwrap(), r);
        let h = Hello { model: model(), backend: "cpu".into(), agent: "test".into() };
        assert_eq!(decode::<Hello>(&encode(&h)).unwrap(), h);
    }

    #[test]
    fn refuses_bad_frames() {
        let good = encode(&job(Context::Full(vec![1])));
        assert_eq!(decode::<DraftJob>(&good[..1]), Err(WireError::Truncated));
        let mut other = good.clone();
        other[0] = 2;
        assert_eq!(decode::<DraftJob>(&other), Err(WireError::Version(2)));
        assert!(matches!(decode::<DraftJob>(&good[..good.len() - 1]), Err(WireError::Malformed(_))));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(decode::<DraftJob>(&trailing), Err(WireError::Malformed(_))));
        assert!(matches!(decode::<DraftJob>(&vec![1u8; MAX_FRAME_BYTES + 1]), Err(WireError::TooLarge(_))));
        let mut big_k = job(Context::Full(vec![1]));
        big_k.k = 200;
        assert!(matches!(decode::<DraftJob>(&encode(&big_k)), Err(WireError::Bounds(_))));
        let lying = DraftReply { job_id: 1, outcome: DraftOutcome::Drafted { tokens: vec![1], probs: Some(vec![2.0]) } };
        assert!(matches!(decode::<DraftReply>(&encode(&lying)), Err(WireError::Bounds(_))));
        let long = DraftReply { job_id: 1, outcome: DraftOutcome::Drafted { tokens: vec![1; 33], probs: None } };
        assert!(matches!(decode::<DraftReply>(&encode(&long)), Err(WireError::Bounds(_))));
    }

    /// A length prefix claiming far more elements than the frame holds fails without
    /// allocating for the claim.
    #[test]
    fn huge_length_claims_fail_cheaply() {
        let mut frame = PROTOCOL_VERSION.to_le_bytes().to_vec();
        frame.extend([9, 3, 0]); // job_id, sequence, Context::Full
        frame.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // a u32::MAX-element vector
        assert!(matches!(decode::<DraftJob>(&frame), Err(WireError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<DraftJob>(&bytes);
            let _ = decode::<DraftReply>(&bytes);
            let _ = decode::<Hello>(&bytes);
            let _ = decode::<LoadAnnouncement>(&bytes);
            let _ = decode::<Topology>(&bytes);
        }
    }
}
