//! What a generation takes and gives (parameters, events, the finish), a sequence's session,
//! and [`generate`]: one request decoded alone, by driving a [`Sequence`] pass after pass.
//!
//! Text is released to the caller only when it cannot be the start of a stop sequence, and
//! never in the middle of a UTF-8 character.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shard_shared::sampling::SamplingParams;

use super::kv_cache::{KvCache, KvPool};
use super::model::Logits;
use super::sequence::{PassShare, PassTiming, Sequence, PROMPT_CHUNK};
use super::Engine;
use crate::spec::adaptive::Pace;
use crate::spec::draft::DraftSource;
use crate::spec::metrics::SpecStats;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Top alternatives to report per generated token; `None` reports no logprobs.
    pub logprobs: Option<usize>,
    /// Top alternatives to report per prompt token (the completions API's `echo`).
    pub prompt_logprobs: Option<usize>,
}

/// How speculative decoding is set up for a request.
#[derive(Clone, Copy)]
pub struct Speculation<'a> {
    pub source: &'a dyn DraftSource,
    /// Longest draft to ask for.
    pub k_max: usize,
    /// Identifies the sequence to the draft source.
    pub sequence: u64,
    /// Measured costs, for a source that drafts on the Oracle's own cores: the draft length
    /// then follows speed (0 when drafting does not pay), not acceptance alone.
    pub pace: Option<&'a Pace>,
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop sequence.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
    /// The client went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Streamed to the caller while generating.
#[derive(Debug, Clone)]
pub enum Event {
    /// Logprobs of the prompt tokens; the first has none.
    Prompt(Vec<Option<TokenLogprob>>),
    /// One generated token and the text that became safe to show.
    Token { id: u32, text: String, logprob: Option<TokenLogprob> },
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub reason: FinishReason,
    /// Text held back until the end (the last part of a UTF-8 character or of a stop
    /// sequence that did not complete).
    pub tail: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens taken from the previous request's cache.
    pub cached_tokens: usize,
    pub prompt_time: Duration,
    pub decode_time: Duration,
    pub spec: SpecStats,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens, but this model's context is {n_ctx} tokens")]
    ContextExceeded { prompt: usize, n_ctx: usize },
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
}

/// A sequence's state between requests: its KV cache and the tokens it holds.
pub struct Session {
    pub cache: KvCache,
    pub tokens: Vec<u32>,
}

impl Session {
    /// An empty session; its cache grows as it is used, up to the context.
    pub fn new(engine: &Engine) -> Self {
        Self { cache: engine.model.new_cache(engine.n_ctx), tokens: vec![] }
    }

    /// An empty session whose cache takes its pages from `pool` (shared by the scheduler's
    /// slots).
    pub fn in_pool(engine: &Engine, pool: &Arc<KvPool>) -> Self {
        Self { cache: KvCache::in_pool(pool, engine.n_ctx), tokens: vec![] }
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.tokens.truncate(len);
    }

    /// Evaluates `tokens` after what the session holds; returns the logits of `want`.
    pub fn eval(&mut self, engine: &Engine, tokens: &[u32], want: Logits) -> Vec<f32> {
        let started = std::time::Instant::now();
        let logits = engine.model.forward(engine.kernel, tokens, &mut self.cache, want);
        self.tokens.extend_from_slice(tokens);
        engine.hold_pass(started, tokens.len());
        logits
    }

    /// Evaluates one token; returns the logits that follow it.
    pub fn step(&mut self, engine: &Engine, token: u32) -> Vec<f32> {
        self.eval(engine, &[token], Logits::Last)
    }

    /// Makes the session hold exactly `context`, keeping the longest common prefix it already
    /// has (at least one token is always evaluated); returns the logits after `context`.
    pub fn extend_to(&mut self, engine: &Engine, context: &[u32]) -> Vec<f32> {
        let reuse = self.tokens.iter().zip(context).take_while(|(a, b)| a == b).count().min(context.len() - 1);
        self.truncate(reuse);
        let mut logits = vec![];
        for chunk in context[reuse..].chunks(PROMPT_CHUNK) {
            logits = self.eval(engine, chunk, Logits::Last);
        }
        logits
    }
}

/// Generates a completion of `prompt`, calling `emit` for each event; `emit` returns false
/// when the caller no longer wants the rest. With `spec`, drafted tokens are verified in
/// batches; the output is what plain decoding gives (identical for greedy requests, and
/// identically distributed for sampled ones).
pub fn generate(
    engine: &Engine,
    session: &mut Session,
    prompt: &[u32],
    p: &GenerateParams,
    spec: Option<Speculation<'_>>,
    emit: &mut dyn FnMut(Event) -> bool,
) -> Result<Finish, GenerateError> {
    let taken = std::mem::replace(session, Session::new(engine));
    let mut seq = match Sequence::new(engine, taken, prompt.to_vec(), p.clone(), spec) {
        Ok(seq) => seq,
        Err((e, back)) => {
            *session = back;
            return Err(e);
        }
    };
    let finish = loop {
        seq.plan(engine, PassShare::ALONE);
        let started = Instant::now();
        let tokens = seq.segment().tokens.len();
        let logits = engine.model.forward_batch(engine.kernel, &mut [seq.segment()]).pop().expect("one segment");
        engine.hold_pass(started, tokens);
        let timing = PassTiming { ms: started.elapsed().as_secs_f64() * 1e3, sequences: 1 };
        if let Some(f) = seq.absorb(engine, logits, timing, emit) {
            break f;
        }
    };
    *session = seq.into_session();
    Ok(finish)
}
