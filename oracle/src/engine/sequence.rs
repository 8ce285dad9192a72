//! One request's generation as a state machine, so that many can share a forward pass.
//!
//! A [`Sequence`] is driven in rounds: [`Sequence::plan`] chooses the tokens of its next pass
//! (a chunk of prompt, one decoded token, or that token plus a draft to verify),
//! [`Sequence::segment`] lends them with the KV cache to a batched pass, and
//! [`Sequence::absorb`] takes the logits back: it samples, verifies drafts, rolls the cache
//! back past a rejection and emits events. [`super::generate::generate`] drives one sequence
//! alone; the queue's scheduler drives many in one pass.

use std::time::Instant;

use shard_shared::sampling::{log_softmax, top_n, Distribution, Sampler};
use shard_shared::tokenizer::Utf8Stream;

use super::batch::Segment;
use super::generate::{Event, Finish, FinishReason, GenerateError, GenerateParams, Session, Speculation, TokenLogprob};
use super::model::{Logits, RowUse};
use super::Engine;
use crate::spec::accept;
use crate::spec::adaptive::{Costs, DraftLength, Pace, PassCost};
use crate::spec::draft::{Draft, DraftRequest};
use crate::spec::metrics::SpecStats;

/// Prompt tokens evaluated per forward pass at most.
pub const PROMPT_CHUNK: usize = 64;

/// Passes at the start of each request that draft whatever the measured costs say.
const PROBE_PASSES: usize = 2;

/// What the driver knows about the pass a sequence is about to join.
#[derive(Debug, Clone, Copy)]
pub struct PassShare {
    /// Sequences in the pass (1: alone).
    pub sequences: usize,
    /// Prompt tokens this sequence may add to the pass.
    pub prompt_budget: usize,
    /// What the driver measured passes to cost ([`crate::spec::adaptive::PassCost`]), as this
    /// sequence's share sees them (a drafted token made for free): a drafted token is then
    /// weighed against this sequence's share of a pass, not a whole solo step.
    pub pass_cost: Option<Costs>,
}

impl PassShare {
    pub const ALONE: PassShare = PassShare { sequences: 1, prompt_budget: PROMPT_CHUNK, pass_cost: None };
}

/// What a pass did, as the driver measured it.
#[derive(Debug, Clone, Copy)]
pub struct PassTiming {
    pub ms: f64,
    /// Sequences that shared it.
    pub sequences: usize,
}

enum Stage {
    /// Evaluating the prompt; `done` tokens are in the cache.
    Prompt {
        done: usize,
        logprobs: Option<Vec<Option<TokenLogprob>>>,
    },
    /// `next` was chosen from `next_logits` but is not yet in the cache (nor emitted, while
    /// `pushed` is false).
    Decode {
        next: u32,
        next_logits: Vec<f32>,
        pushed: bool,
    },
    Finished,
}

/// The pass planned for a sequence.
enum Planned {
    Prompt,
    Plain,
    Verify { draft: Draft, draft_ms: f64, trusted: bool },
}

/// One request being generated.
pub struct Sequence<'s> {
    pub session: Session,
    prompt: Vec<u32>,
    params: GenerateParams,
    spec: Option<Speculation<'s>>,
    sampler: Sampler,
    out: Output,
    draft_len: Option<DraftLength>,
    probing: bool,
    stats: SpecStats,
    cached: usize,
    max_new: usize,
    started: Instant,
    prompt_done: Option<Instant>,
    stage: Stage,
    tokens: Vec<u32>,
    want: Logits,
    planned: Option<Planned>,
}

impl<'s> Sequence<'s> {
    /// Starts a request on `session`, keeping the longest prefix it shares with `prompt`
    /// (unless every prompt position's logprobs are wanted).
    pub fn new(
        engine: &Engine,
        mut session: Session,
        prompt: Vec<u32>,
        params: GenerateParams,
        spec: Option<Speculation<'s>>,
    ) -> Result<Self, (GenerateError, Session)> {
        if prompt.is_empty() {
            return Err((GenerateError::EmptyPrompt, session));
        }
        let n_vocab = engine.model.config.n_vocab;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err((GenerateError::BadToken(bad), session));
        }
        if prompt.len() >= engine.n_ctx {
            return Err((GenerateError::ContextExceeded { prompt: prompt.len(), n_ctx: engine.n_ctx }, session));
        }
        let (cached, logprobs) = match params.prompt_logprobs {
            Some(_) => (0, Some(vec![None])),
            None => (session.tokens.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1), None),
        };
        session.truncate(cached);
        let pace = spec.and_then(|s| s.pace);
        Ok(Self {
            session,
            max_new: params.max_tokens.min(engine.n_ctx - prompt.len()),
            sampler: Sampler::new(params.sampling.clone(), params.seed),
            draft_len: spec.map(|s| DraftLength::new(s.k_max, PassCost::from_timings(engine.pass_timings()).marginal_alone())),
            probing: pace.is_none_or(Pace::start_request),
            spec,
            out: Output::default(),
            stats: SpecStats::default(),
            cached,
            started: Instant::now(),
            prompt_done: None,
            stage: Stage::Prompt { done: cached, logprobs },
            tokens: vec![],
            want: Logits::Last,
            planned: None,
            prompt,
            params,
        })
    }

    /// Whether the sequence is still evaluating its prompt.
    pub fn in_prompt(&self) -> bool {
        matches!(self.stage, Stage::Prompt { .. })
    }

    /// Chooses the tokens of the next pass (drafting them, when a draft source is set and a
    /// draft pays). Call [`Sequence::segment`] and then [`Sequence::absorb`] after it.
    pub fn plan(&mut self, engine: &Engine, share: PassShare) {
        self.tokens.clear();
        match &self.stage {
            Stage::Prompt { done, logprobs } => {
                let end = (done + share.prompt_budget.clamp(1, PROMPT_CHUNK)).min(self.prompt.len());
                self.tokens.extend_from_slice(&self.prompt[*done..end]);
                self.want = if logprobs.is_some() { Logits::All } else { Logits::Last };
                self.planned = Some(Planned::Prompt);
            }
            Stage::Decode { next, pushed, .. } => {
                assert!(*pushed, "plan before absorbing the last pass");
                let next = *next;
                let planned = self.plan_decode(engine, next, share);
                self.tokens.push(next);
                if let Planned::Verify { draft, .. } = &planned {
                    self.tokens.extend_from_slice(&draft.tokens);
                    self.want = Logits::All;
                } else {
                    self.want = Logits::Last;
                }
                self.stats.target_passes += 1;
                self.planned = Some(planned);
            }
            Stage::Finished => panic!("plan on a finished sequence"),
        }
    }

    fn plan_decode(&mut self, engine: &Engine, next: u32, share: PassShare) -> Planned {
        let (Some(s), Some(d)) = (self.spec, &self.draft_len) else { return Planned::Plain };
        let remaining = self.max_new - self.out.generated.len();
        let position = self.session.tokens.len();
        let wanted = match s.pace {
            // A probing request's first two passes draft (its acceptance is its own; the
            // second times steady drafting, the first also catches the draft up on the
            // prompt), once a plain step has been timed to compare with; after that, the
            // fastest length.
            Some(pace) if !self.probing || !pace.knows_step() => 0,
            Some(_) if self.stats.verifications < PROBE_PASSES => d.k(),
            Some(pace) => pace.costs().map_or_else(|| d.k(), |c| d.choose(&share_of(c, share))),
            // Drafts made elsewhere (Scouts) cost only their verification. Greedy requests
            // draft as far as the measured pass costs say it pays (in a large batch on a
            // CPU, often not at all); a sampled request keeps a length that timing cannot
            // move, so that its seed alone decides its output.
            None => match share.pass_cost {
                Some(c) if self.params.sampling.is_greedy() => d.choose(&c),
                _ => d.k(),
            },
        };
        // Room for the drafted tokens plus the target's own token after them.
        let k = wanted.min(remaining - 1).min(engine.n_ctx.saturating_sub(position + 2));
        if k == 0 {
            return Planned::Plain;
        }
        let n_vocab = engine.model.config.n_vocab;
        let draft_started = Instant::now();
        let mut context = Vec::with_capacity(position + 1);
        context.extend_from_slice(&self.session.tokens);
        context.push(next);
        let p = &self.params;
        let req = DraftRequest { sequence: s.sequence, context: &context, k, sampling: &p.sampling, seed: p.seed };
        let draft = s.source.draft(&req).map(|mut d| {
            // Whatever a source sends, verify at most k in-vocabulary tokens.
            let valid = d.tokens.iter().take(k).take_while(|&&t| (t as usize) < n_vocab).count();
            d.tokens.truncate(valid);
            if let Some(q) = &mut d.q {
                q.truncate(valid);
            }
            d
        });
        let draft_ms = draft_started.elapsed().as_secs_f64() * 1e3;
        match draft {
            Some(draft) if !draft.tokens.is_empty() => Planned::Verify { draft, draft_ms, trusted: s.source.trusted() },
            _ => Planned::Plain,
        }
    }

    /// The most positions this sequence's cache can come to hold: its prompt, every token it
    /// may generate, and a drafted token past them (within the context).
    pub fn most_positions(&self, engine: &Engine) -> usize {
        (self.prompt.len() + self.max_new + 1).min(engine.n_ctx)
    }

    /// What this sequence's logits feed: an argmax alone when it decodes greedily with no
    /// logprobs, logit bias or penalties (and not while its prompt's logprobs are due).
    fn rows_feed(&self) -> RowUse {
        let (p, s) = (&self.params, &self.params.sampling);
        let argmax_only = s.is_greedy()
            && p.logprobs.is_none()
            && s.logit_bias.is_empty()
            && s.frequency_penalty == 0.0
            && s.presence_penalty == 0.0
            && !matches!(self.stage, Stage::Prompt { logprobs: Some(_), .. });
        if argmax_only {
            RowUse::Argmax
        } else {
            RowUse::Full
        }
    }

    /// This sequence's share of the pass: its planned tokens and its cache.
    pub fn segment(&mut self) -> Segment<'_> {
        let rows = self.rows_feed();
        Segment { tokens: &self.tokens, cache: &mut self.session.cache, want: self.want, rows }
    }

    /// Takes the logits of the planned pass; `Some` once the sequence has finished.
    pub fn absorb(
        &mut self,
        engine: &Engine,
        logits: Vec<f32>,
        timing: PassTiming,
        emit: &mut dyn FnMut(Event) -> bool,
    ) -> Option<Finish> {
        let planned = self.planned.take().expect("absorb after plan");
        self.session.tokens.extend_from_slice(&self.tokens);
        let n_vocab = engine.model.config.n_vocab;
        let pace = self.spec.and_then(|s| s.pace).filter(|_| timing.sequences == 1);
        match planned {
            Planned::Prompt => {
                let Stage::Prompt { done, logprobs } = &mut self.stage else { unreachable!("prompt pass outside the prompt") };
                *done += self.tokens.len();
                if let (Some(lp), Some(n_top)) = (logprobs.as_mut(), self.params.prompt_logprobs) {
                    for row in logits.chunks_exact(n_vocab) {
                        // Row j predicts the token after it: the list grows one entry per row.
                        let idx = lp.len();
                        if idx < self.prompt.len() {
                            let l = log_softmax(row);
                            let token = self.prompt[idx];
                            lp.push(Some(TokenLogprob { token, logprob: l[token as usize], top: top_n(&l, n_top) }));
                        }
                    }
                }
                if *done < self.prompt.len() {
                    return None;
                }
                let logprobs = logprobs.take();
                self.prompt_done = Some(Instant::now());
                if let Some(lp) = logprobs {
                    if !emit(Event::Prompt(lp)) {
                        return Some(self.finish(FinishReason::Cancelled, String::new()));
                    }
                }
                if self.max_new == 0 {
                    return Some(self.finish(FinishReason::Length, String::new()));
                }
                let last = logits[logits.len() - n_vocab..].to_vec();
                let next = self.sampler.sample(&last, &[]);
                self.stage = Stage::Decode { next, next_logits: last, pushed: false };
            }
            Planned::Plain => {
                if let Some(pace) = pace {
                    pace.record_step(timing.ms);
                }
                let next = self.sampler.sample(&logits, &self.out.generated);
                self.stage = Stage::Decode { next, next_logits: logits, pushed: false };
            }
            Planned::Verify { draft, draft_ms, trusted } => {
                if let Some(pace) = pace {
                    let steady = (self.stats.verifications > 0).then_some(draft_ms);
                    pace.record_pass(draft.tokens.len(), steady, timing.ms);
                }
                let position = self.session.tokens.len() - self.tokens.len();
                let dists = accept::target_distributions(&self.sampler, &logits, n_vocab, &self.out.generated, &draft.tokens);
                let verdict = if self.params.sampling.is_greedy() {
                    let argmax: Vec<u32> = dists.iter().map(Distribution::argmax).collect();
                    accept::greedy(&argmax, &draft.tokens)
                } else {
                    let q = if trusted { draft.q.as_deref().filter(|q| q.len() == draft.tokens.len()) } else { None };
                    accept::sampled(&dists, &draft.tokens, q, &mut self.sampler)
                };
                self.stats.verifications += 1;
                self.stats.drafted += draft.tokens.len();
                self.stats.accepted += verdict.accepted;
                if let Some(s) = self.spec {
                    s.source.feedback(s.sequence, draft.tokens.len(), verdict.accepted);
                }
                if let Some(d) = self.draft_len.as_mut() {
                    d.update(draft.tokens.len(), verdict.accepted);
                }
                // Keep `next` and the accepted drafts; the rejected positions are rolled back.
                self.session.truncate(position + 1 + verdict.accepted);
                for (i, &d) in draft.tokens[..verdict.accepted].iter().enumerate() {
                    if let Err(reason) = self.out.push(engine, &self.params, d, &logits[i * n_vocab..(i + 1) * n_vocab], emit) {
                        return Some(self.end(reason));
                    }
                }
                let row = logits[verdict.accepted * n_vocab..(verdict.accepted + 1) * n_vocab].to_vec();
                self.stage = Stage::Decode { next: verdict.next, next_logits: row, pushed: false };
            }
        }
        self.push_next(engine, emit)
    }

    /// Emits the token chosen last and checks the limits; `Some` once finished.
    fn push_next(&mut self, engine: &Engine, emit: &mut dyn FnMut(Event) -> bool) -> Option<Finish> {
        let Stage::Decode { next, next_logits, pushed } = &mut self.stage else { return None };
        *pushed = true;
        if let Err(reason) = self.out.push(engine, &self.params, *next, next_logits, emit) {
            return Some(self.end(reason));
        }
        if self.out.generated.len() >= self.max_new {
            return Some(self.end(FinishReason::Length));
        }
        None
    }

    /// Stops the sequence where it stands (the client went away, or the server is stopping).
    pub fn cancel(&mut self) -> Finish {
        self.end(FinishReason::Cancelled)
    }

    fn end(&mut self, reason: FinishReason) -> Finish {
        let tail = if self.out.stopped_by_sequence { String::new() } else { self.out.finish_text() };
        self.finish(reason, tail)
    }

    fn finish(&mut self, reason: FinishReason, tail: String) -> Finish {
        self.stage = Stage::Finished;
        // A stage left mid-pass (a cancelled plan) holds nothing the cache does not.
        self.planned = None;
        let prompt_done = *self.prompt_done.get_or_insert_with(Instant::now);
        Finish {
            reason,
            tail,
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.out.generated.len(),
            cached_tokens: self.cached,
            prompt_time: prompt_done - self.started,
            decode_time: prompt_done.elapsed(),
            spec: self.stats,
        }
    }

    /// Gives the session back (for the next request of the same client).
    pub fn into_session(self) -> Session {
        self.session
    }
}

/// An in-process draft's costs as they weigh on one sequence among `share.sequences`: its
/// plain step is its share of a whole pass, so a drafted token pays when it beats the
/// batch's own rate.
fn share_of(c: Costs, share: PassShare) -> Costs {
    match share.pass_cost {
        Some(p) if share.sequences > 1 => Costs { draft_per_token_ms: c.draft_per_token_ms, ..p },
        _ => c,
    }
}

/// Turns accepted tokens into events: logprobs, text safe to show, stop conditions.
#[derive(Default)]
struct Output {
    generated: Vec<u32>,
    utf8: Utf8Stream,
    /// Text not yet released, because it could still become a stop sequence.
    pending: String,
    /// A stop sequence matched; the text after it is dropped.
    stopped_by_sequence: bool,
}

impl Output {
    /// Takes one token chosen from `logits`; `Err` when it ends the sequence.
    fn push(
        &mut self,
        engine: &Engine,
        p: &GenerateParams,
        id: u32,
        logits: &[f32],
        emit: &mut dyn FnMut(Event) -> bool,
    ) -> Result<(), FinishReason> {
        if engine.tokenizer.is_end_of_generation(id) {
            return Err(FinishReason::Stop);
        }
        let logprob = p.logprobs.map(|n_top| {
            let lp = log_softmax(logits);
            TokenLogprob { token: id, logprob: lp[id as usize], top: top_n(&lp, n_top) }
        });
        self.generated.push(id);
        self.pending.push_str(&self.utf8.push(engine.tokenizer.output_bytes(id, false)));
        if let Some(at) = p.stop.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            self.pending.truncate(at);
            let text = std::mem::take(&mut self.pending);
            emit(Event::Token { id, text, logprob });
            self.stopped_by_sequence = true;
            return Err(FinishReason::Stop);
        }
        let hold = partial_stop_suffix(&self.pending, &p.stop);
        let text: String = self.pending.drain(..self.pending.len() - hold).collect();
        if !emit(Event::Token { id, text, logprob }) {
            return Err(FinishReason::Cancelled);
        }
        Ok(())
    }

    /// Whatever text is still held back.
    fn finish_text(&mut self) -> String {
        let mut tail = std::mem::take(&mut self.pending);
        tail.push_str(&self.utf8.finish());
        tail
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
