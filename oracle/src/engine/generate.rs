//! The decoding loop: prompt evaluation (reusing the cached prefix of the previous request),
//! sampling, logprobs, stop sequences and end-of-generation tokens.
//!
//! Text is released to the caller only when it cannot be the start of a stop sequence, and
//! never in the middle of a UTF-8 character.

use std::time::{Duration, Instant};

use shard_shared::sampling::{log_softmax, top_n, Distribution, Sampler, SamplingParams};
use shard_shared::tokenizer::Utf8Stream;

use super::kv_cache::KvCache;
use super::model::Logits;
use super::Engine;
use crate::spec::accept;
use crate::spec::adaptive::{DraftLength, Pace};
use crate::spec::draft::{DraftRequest, DraftSource};
use crate::spec::metrics::SpecStats;

/// Prompt tokens evaluated per forward pass.
const PROMPT_CHUNK: usize = 64;

/// Passes at the start of each request that draft whatever the measured costs say.
const PROBE_PASSES: usize = 2;

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
    pub fn new(engine: &Engine) -> Self {
        Self { cache: engine.model.new_cache(engine.n_ctx), tokens: vec![] }
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
        if let Some(rest) = engine.min_step.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
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
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let n_vocab = engine.model.config.n_vocab;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(GenerateError::BadToken(bad));
    }
    if prompt.len() >= engine.n_ctx {
        return Err(GenerateError::ContextExceeded { prompt: prompt.len(), n_ctx: engine.n_ctx });
    }
    let started = Instant::now();

    // Prompt: reuse the cached common prefix, unless every position's logits are wanted.
    let mut logits;
    let cached;
    if let Some(n_top) = p.prompt_logprobs {
        cached = 0;
        session.truncate(0);
        let mut prompt_lp: Vec<Option<TokenLogprob>> = vec![None];
        logits = vec![];
        for chunk in prompt.chunks(PROMPT_CHUNK) {
            let out = session.eval(engine, chunk, Logits::All);
            for row in out.chunks_exact(n_vocab) {
                // Row j predicts the token after it: prompt_lp grows one entry per row.
                let idx = prompt_lp.len();
                if idx < prompt.len() {
                    let lp = log_softmax(row);
                    prompt_lp.push(Some(TokenLogprob {
                        token: prompt[idx],
                        logprob: lp[prompt[idx] as usize],
                        top: top_n(&lp, n_top),
                    }));
                }
            }
            logits = out[out.len() - n_vocab..].to_vec();
        }
        if !emit(Event::Prompt(prompt_lp)) {
            return Ok(finish(
                FinishReason::Cancelled,
                String::new(),
                prompt.len(),
                0,
                0,
                started,
                Instant::now(),
                SpecStats::default(),
            ));
        }
    } else {
        cached = session.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        logits = session.extend_to(engine, prompt);
    }
    let prompt_done = Instant::now();

    let max_new = p.max_tokens.min(engine.n_ctx - prompt.len());
    let mut out = Output {
        engine,
        p,
        generated: vec![],
        utf8: Utf8Stream::default(),
        pending: String::new(),
        stopped_by_sequence: false,
        emit,
    };
    let mut sampler = Sampler::new(p.sampling.clone(), p.seed);
    let mut draft_len = spec.map(|s| DraftLength::new(s.k_max, 0.1));
    let pace = spec.and_then(|s| s.pace);
    let probing = pace.is_none_or(Pace::start_request);
    let mut stats = SpecStats::default();
    if max_new == 0 {
        return Ok(finish(FinishReason::Length, String::new(), prompt.len(), 0, cached, started, prompt_done, stats));
    }
    // `next` has been chosen from `next_logits` but not yet run through the model.
    let mut next = sampler.sample(&logits, &[]);
    let mut next_logits = logits;
    let reason = 'decode: loop {
        match out.push(next, &next_logits) {
            Flow::Go => {}
            Flow::Stop(reason) => break 'decode reason,
        }
        let remaining = max_new - out.generated.len();
        if remaining == 0 {
            break FinishReason::Length;
        }
        let position = session.tokens.len();
        let wanted = match (pace, &draft_len) {
            // A probing request's first two passes draft (its acceptance is its own; the
            // second times steady drafting, the first also catches the draft up on the
            // prompt), once a plain step has been timed to compare with; after that, the
            // fastest length.
            (Some(pace), Some(_)) if !probing || !pace.knows_step() => 0,
            (Some(_), Some(d)) if stats.verifications < PROBE_PASSES => d.k(),
            (Some(pace), Some(d)) => pace.costs().map_or_else(|| d.k(), |c| d.choose(&c)),
            (None, Some(d)) => d.k(),
            (_, None) => 0,
        };
        // Room for the drafted tokens plus the target's own token after them.
        let k = wanted.min(remaining - 1).min(engine.n_ctx.saturating_sub(position + 2));
        let draft_started = Instant::now();
        let draft = match spec {
            Some(s) if k > 0 => {
                let mut context = Vec::with_capacity(position + 1);
                context.extend_from_slice(&session.tokens);
                context.push(next);
                let req = DraftRequest { sequence: s.sequence, context: &context, k, sampling: &p.sampling, seed: p.seed };
                s.source.draft(&req).map(|mut d| {
                    // Whatever a source sends, verify at most k in-vocabulary tokens.
                    let valid = d.tokens.iter().take(k).take_while(|&&t| (t as usize) < n_vocab).count();
                    d.tokens.truncate(valid);
                    if let Some(q) = &mut d.q {
                        q.truncate(valid);
                    }
                    (d, s)
                })
            }
            _ => None,
        };
        stats.target_passes += 1;
        let draft_ms = draft_started.elapsed().as_secs_f64() * 1e3;
        let Some((draft, s)) = draft.filter(|(d, _)| !d.tokens.is_empty()) else {
            let step_started = Instant::now();
            next_logits = session.step(engine, next);
            if let Some(pace) = pace {
                pace.record_step(step_started.elapsed().as_secs_f64() * 1e3);
            }
            next = sampler.sample(&next_logits, &out.generated);
            continue;
        };

        // Verify: one pass over `next` and the drafted tokens gives k + 1 distributions.
        let mut batch = Vec::with_capacity(draft.tokens.len() + 1);
        batch.push(next);
        batch.extend_from_slice(&draft.tokens);
        let verify_started = Instant::now();
        let rows = session.eval(engine, &batch, Logits::All);
        if let Some(pace) = pace {
            let steady = (stats.verifications > 0).then_some(draft_ms);
            pace.record_pass(draft.tokens.len(), steady, verify_started.elapsed().as_secs_f64() * 1e3);
        }
        let mut history = out.generated.clone();
        let mut dists: Vec<Distribution> = Vec::with_capacity(batch.len());
        for (i, row) in rows.chunks_exact(n_vocab).enumerate() {
            dists.push(sampler.distribution(row, &history));
            if let Some(&d) = draft.tokens.get(i) {
                history.push(d);
            }
        }
        let verdict = if p.sampling.is_greedy() {
            let argmax: Vec<u32> = dists.iter().map(Distribution::argmax).collect();
            accept::greedy(&argmax, &draft.tokens)
        } else {
            let q = if s.source.trusted() { draft.q.as_deref().filter(|q| q.len() == draft.tokens.len()) } else { None };
            accept::sampled(&dists, &draft.tokens, q, &mut sampler)
        };
        stats.verifications += 1;
        stats.drafted += draft.tokens.len();
        stats.accepted += verdict.accepted;
        s.source.feedback(s.sequence, draft.tokens.len(), verdict.accepted);
        if let Some(d) = draft_len.as_mut() {
            d.update(draft.tokens.len(), verdict.accepted);
        }
        // Keep `next` and the accepted drafts; the rejected positions are rolled back.
        session.truncate(position + 1 + verdict.accepted);
        for (i, &d) in draft.tokens[..verdict.accepted].iter().enumerate() {
            if let Flow::Stop(reason) = out.push(d, &rows[i * n_vocab..(i + 1) * n_vocab]) {
                break 'decode reason;
            }
        }
        next = verdict.next;
        next_logits = rows[verdict.accepted * n_vocab..(verdict.accepted + 1) * n_vocab].to_vec();
    };
    let tail = if out.stopped_by_sequence { String::new() } else { out.finish_text() };
    Ok(finish(reason, tail, prompt.len(), out.generated.len(), cached, started, prompt_done, stats))
}

enum Flow {
    Go,
    Stop(FinishReason),
}

/// Turns accepted tokens into events: logprobs, text safe to show, stop conditions.
struct Output<'a, 'e> {
    engine: &'a Engine,
    p: &'a GenerateParams,
    generated: Vec<u32>,
    utf8: Utf8Stream,
    /// Text not yet released, because it could still become a stop sequence.
    pending: String,
    /// A stop sequence matched; the text after it is dropped.
    stopped_by_sequence: bool,
    emit: &'a mut (dyn FnMut(Event) -> bool + 'e),
}

impl Output<'_, '_> {
    /// Takes one token chosen from `logits`.
    fn push(&mut self, id: u32, logits: &[f32]) -> Flow {
        if self.engine.tokenizer.is_end_of_generation(id) {
            return Flow::Stop(FinishReason::Stop);
        }
        let logprob = self.p.logprobs.map(|n_top| {
            let lp = log_softmax(logits);
            TokenLogprob { token: id, logprob: lp[id as usize], top: top_n(&lp, n_top) }
        });
        self.generated.push(id);
        self.pending.push_str(&self.utf8.push(self.engine.tokenizer.output_bytes(id, false)));
        if let Some(at) = self.p.stop.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            self.pending.truncate(at);
            let text = std::mem::take(&mut self.pending);
            (self.emit)(Event::Token { id, text, logprob });
            self.stopped_by_sequence = true;
            return Flow::Stop(FinishReason::Stop);
        }
        let hold = partial_stop_suffix(&self.pending, &self.p.stop);
        let text: String = self.pending.drain(..self.pending.len() - hold).collect();
        if !(self.emit)(Event::Token { id, text, logprob }) {
            return Flow::Stop(FinishReason::Cancelled);
        }
        Flow::Go
    }

    /// Whatever text is still held back.
    fn finish_text(&mut self) -> String {
        let mut tail = std::mem::take(&mut self.pending);
        tail.push_str(&self.utf8.finish());
        tail
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    reason: FinishReason,
    tail: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    started: Instant,
    prompt_done: Instant,
    spec: SpecStats,
) -> Finish {
    Finish {
        reason,
        tail,
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        prompt_time: prompt_done - started,
        decode_time: prompt_done.elapsed(),
        spec,
    }
}

/// Length of the longest suffix of `text` that begins one of the stop sequences.
fn partial_stop_suffix(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for k in (1..s.len()).rev() {
            if k <= hold {
                break;
            }
            if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                hold = k;
                break;
            }
        }
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_stop_sequences() {
        let stops = vec!["</end>".to_string(), "\n\n".to_string()];
        assert_eq!(partial_stop_suffix("hello </e", &stops), 3);
        assert_eq!(partial_stop_suffix("hello\n", &stops), 1);
        assert_eq!(partial_stop_suffix("hello", &stops), 0);
        assert_eq!(partial_stop_suffix("é<", &["<é>".to_string()]), 1);
    }
}
