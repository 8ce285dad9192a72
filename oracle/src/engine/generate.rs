//! The decoding loop: prompt evaluation (reusing the cached prefix of the previous request),
//! sampling, logprobs, stop sequences and end-of-generation tokens.
//!
//! Text is released to the caller only when it cannot be the start of a stop sequence, and
//! never in the middle of a UTF-8 character.

use std::time::{Duration, Instant};

use shard_shared::sampling::{log_softmax, top_n, Sampler, SamplingParams};
use shard_shared::tokenizer::Utf8Stream;

use super::kv_cache::KvCache;
use super::model::Logits;
use super::Engine;

/// Prompt tokens evaluated per forward pass.
const PROMPT_CHUNK: usize = 64;

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

    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.tokens.truncate(len);
    }

    /// Evaluates `tokens` after what the session holds; returns the logits of `want`.
    fn eval(&mut self, engine: &Engine, tokens: &[u32], want: Logits) -> Vec<f32> {
        let logits = engine.model.forward(engine.kernel, tokens, &mut self.cache, want);
        self.tokens.extend_from_slice(tokens);
        logits
    }
}

/// Generates a completion of `prompt`, calling `emit` for each event; `emit` returns false
/// when the caller no longer wants the rest.
pub fn generate(
    engine: &Engine,
    session: &mut Session,
    prompt: &[u32],
    p: &GenerateParams,
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

    // Prompt: reuse the common prefix unless every position's logits are wanted.
    let reuse = match p.prompt_logprobs {
        Some(_) => 0,
        None => session.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1),
    };
    session.truncate(reuse);
    let mut logits = Vec::new();
    let mut prompt_lp: Vec<Option<TokenLogprob>> = vec![None];
    for chunk in prompt[reuse..].chunks(PROMPT_CHUNK) {
        let want = if p.prompt_logprobs.is_some() { Logits::All } else { Logits::Last };
        let out = session.eval(engine, chunk, want);
        if let Some(n_top) = p.prompt_logprobs {
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
        }
        logits = out[out.len() - n_vocab..].to_vec();
    }
    if p.prompt_logprobs.is_some() && !emit(Event::Prompt(prompt_lp)) {
        return Ok(finish(FinishReason::Cancelled, String::new(), prompt.len(), 0, reuse, started, Instant::now()));
    }
    let prompt_done = Instant::now();

    let max_new = p.max_tokens.min(engine.n_ctx - prompt.len());
    let mut sampler = Sampler::new(p.sampling.clone(), p.seed);
    let mut generated: Vec<u32> = Vec::new();
    let mut utf8 = Utf8Stream::default();
    let mut pending = String::new();
    let mut reason = FinishReason::Length;
    while generated.len() < max_new {
        let id = sampler.sample(&logits, &generated);
        if engine.tokenizer.is_end_of_generation(id) {
            reason = FinishReason::Stop;
            break;
        }
        let logprob = p.logprobs.map(|n_top| {
            let lp = log_softmax(&logits);
            TokenLogprob { token: id, logprob: lp[id as usize], top: top_n(&lp, n_top) }
        });
        generated.push(id);
        pending.push_str(&utf8.push(engine.tokenizer.output_bytes(id, false)));
        if let Some(at) = p.stop.iter().filter_map(|s| pending.find(s.as_str())).min() {
            pending.truncate(at);
            emit(Event::Token { id, text: std::mem::take(&mut pending), logprob });
            return Ok(finish(FinishReason::Stop, String::new(), prompt.len(), generated.len(), reuse, started, prompt_done));
        }
        let hold = partial_stop_suffix(&pending, &p.stop);
        let text: String = pending.drain(..pending.len() - hold).collect();
        if !emit(Event::Token { id, text, logprob }) {
            reason = FinishReason::Cancelled;
            break;
        }
        if generated.len() == max_new {
            break;
        }
        logits = session.eval(engine, &[id], Logits::Last);
    }
    pending.push_str(&utf8.finish());
    Ok(finish(reason, pending, prompt.len(), generated.len(), reuse, started, prompt_done))
}

fn finish(
    reason: FinishReason,
    tail: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    started: Instant,
    prompt_done: Instant,
) -> Finish {
    Finish {
        reason,
        tail,
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        prompt_time: prompt_done - started,
        decode_time: prompt_done.elapsed(),
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
