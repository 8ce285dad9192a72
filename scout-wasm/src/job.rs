//! Answering draft jobs: resolve the job's context (full, or a delta against this Scout's last
//! job for the sequence), check it, draft, and reply. No transport here, so the same code
//! serves the native Scout, the browser Scout and the tests.

use std::collections::{HashMap, VecDeque};

use shard_shared::sampling::SamplingParams;
use shard_shared::wire::{Context, DraftJob, DraftOutcome, DraftReply, ModelRef, Refusal};

use crate::Drafter;

/// Sequences whose last context is remembered for deltas; the oldest is forgotten beyond this.
const MAX_SEQUENCES: usize = 256;

/// What this Scout has done, for its dashboard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStats {
    pub jobs: u64,
    pub refused: u64,
    pub tokens_drafted: u64,
    /// Time spent drafting, in milliseconds.
    pub drafting_ms: f64,
}

/// A Scout's draft model with the contexts its deltas build on.
pub struct JobRunner {
    drafter: Drafter,
    model: ModelRef,
    contexts: HashMap<u64, (u64, Vec<u32>)>,
    order: VecDeque<u64>,
    pub stats: JobStats,
}

impl JobRunner {
    pub fn new(drafter: Drafter, model: ModelRef) -> Self {
        Self { drafter, model, contexts: HashMap::new(), order: VecDeque::new(), stats: JobStats::default() }
    }

    pub fn model(&self) -> &ModelRef {
        &self.model
    }

    /// The full context a job stands for, or why it cannot be had.
    fn resolve(&self, job: &DraftJob) -> Result<Vec<u32>, Refusal> {
        match &job.context {
            Context::Full(tokens) => Ok(tokens.clone()),
            Context::Delta { base_job, keep, append } => {
                let (last_job, base) = self.contexts.get(&job.sequence).ok_or(Refusal::UnknownBase)?;
                if last_job != base_job || *keep as usize > base.len() {
                    return Err(Refusal::UnknownBase);
                }
                let mut tokens = base[..*keep as usize].to_vec();
                tokens.extend_from_slice(append);
                Ok(tokens)
            }
        }
    }

    fn remember(&mut self, sequence: u64, job_id: u64, context: Vec<u32>) {
        if self.contexts.insert(sequence, (job_id, context)).is_none() {
            self.order.push_back(sequence);
            while self.order.len() > MAX_SEQUENCES {
                if let Some(old) = self.order.pop_front() {
                    self.contexts.remove(&old);
                }
            }
        }
    }

    /// Answers one job. `now_ms` is a clock for the statistics (wasm has no `Instant`).
    pub async fn run(&mut self, job: DraftJob, now_ms: impl Fn() -> f64) -> DraftReply {
        let refuse = |why| DraftReply { job_id: job.job_id, outcome: DraftOutcome::Refused(why) };
        self.stats.jobs += 1;
        if job.model != self.model {
            self.stats.refused += 1;
            return refuse(Refusal::WrongModel);
        }
        let context = match self.resolve(&job) {
            Ok(c) => c,
            Err(why) => {
                self.stats.refused += 1;
                return refuse(why);
            }
        };
        let params = SamplingParams::from(&job.sampling);
        let started = now_ms();
        let proposal = match self.drafter.propose(&context, job.k as usize, &params, job.seed).await {
            Ok(p) => p,
            Err(_) => {
                self.stats.refused += 1;
                return refuse(Refusal::BadContext);
            }
        };
        self.stats.drafting_ms += now_ms() - started;
        self.stats.tokens_drafted += proposal.tokens.len() as u64;
        self.remember(job.sequence, job.job_id, context);
        let probs = proposal.q.map(|q| q.iter().zip(&proposal.tokens).map(|(d, &x)| d.prob(x)).collect());
        DraftReply { job_id: job.job_id, outcome: DraftOutcome::Drafted { tokens: proposal.tokens, probs } }
    }
}
