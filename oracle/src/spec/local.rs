//! The in-process draft source: a small model loaded next to the target
//! (`shard-oracle --draft-model`, like llama.cpp's `-md`), for operators without Scouts.
//!
//! It keeps a KV cache per sequence (the scheduler decodes several at once) and reuses its
//! longest common prefix with each request's context, so consecutive drafts of one sequence
//! only evaluate the tokens added since. A sequence's cache goes when it finishes; past
//! [`MAX_SESSIONS`] the least recently used one is dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use shard_shared::sampling::{Sampler, SamplingParams};

use super::draft::{Draft, DraftRequest, DraftSource};
use crate::engine::generate::Session;
use crate::engine::Engine;

/// Draft caches kept at most (more than the largest `--parallel` is harmless: a dropped cache
/// is rebuilt from the context).
pub const MAX_SESSIONS: usize = 64;

pub struct LocalDraft {
    engine: Engine,
    /// Per sequence: its cache and when it was last used.
    sessions: Mutex<HashMap<u64, (Session, u64)>>,
    clock: std::sync::atomic::AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("the draft model cannot draft for this target: {0}")]
pub struct IncompatibleDraft(String);

impl LocalDraft {
    /// Wraps a loaded draft model after checking it shares the target's vocabulary.
    pub fn new(draft: Engine, target: &Engine) -> Result<Self, IncompatibleDraft> {
        let (dt, tt) = (&draft.tokenizer, &target.tokenizer);
        if dt.n_vocab() != tt.n_vocab() {
            return Err(IncompatibleDraft(format!("vocabulary of {} tokens, the target's has {}", dt.n_vocab(), tt.n_vocab())));
        }
        if let Some(id) = (0..dt.n_vocab() as u32).find(|&i| dt.piece(i) != tt.piece(i)) {
            return Err(IncompatibleDraft(format!("token {id} differs from the target's")));
        }
        if draft.model.config.n_vocab != target.model.config.n_vocab {
            return Err(IncompatibleDraft("output layer size differs from the target's".into()));
        }
        Ok(Self { engine: draft, sessions: Mutex::default(), clock: Default::default() })
    }

    pub fn model_id(&self) -> &str {
        &self.engine.model_id
    }
}

impl DraftSource for LocalDraft {
    fn name(&self) -> &str {
        "local"
    }

    fn trusted(&self) -> bool {
        true
    }

    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft> {
        if req.k == 0 || req.context.is_empty() || req.context.len() + req.k >= self.engine.n_ctx {
            return None;
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if !sessions.contains_key(&req.sequence) && sessions.len() >= MAX_SESSIONS {
            let oldest = sessions.iter().min_by_key(|(_, (_, used))| *used).map(|(&k, _)| k);
            sessions.remove(&oldest.expect("a full map has an oldest entry"));
        }
        let now = self.clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (session, used) = sessions.entry(req.sequence).or_insert_with(|| (Session::new(&self.engine), now));
        *used = now;
        let mut logits = session.extend_to(&self.engine, req.context);
        // The draft samples like the request, minus penalties and biases (the acceptance
        // rule corrects for any difference, and `q` records what was really used).
        let params = SamplingParams {
            temperature: req.sampling.temperature,
            top_k: req.sampling.top_k,
            top_p: req.sampling.top_p,
            ..SamplingParams::default()
        };
        let greedy = params.is_greedy();
        let mut sampler = Sampler::new(params, req.seed ^ (req.context.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut tokens = Vec::with_capacity(req.k);
        let mut q = Vec::with_capacity(req.k);
        for i in 0..req.k {
            let dist = sampler.distribution(&logits, &[]);
            let x = if greedy { dist.argmax() } else { sampler.draw(&dist) };
            tokens.push(x);
            q.push(dist);
            if i + 1 < req.k {
                logits = session.step(&self.engine, x);
            }
        }
        Some(Draft { tokens, q: (!greedy).then_some(q) })
    }

    fn finished(&self, sequence: u64) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&sequence);
    }
}
