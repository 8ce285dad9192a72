//! The ticket checker: a thread that runs the reference draft model (the very file Scouts
//! must hold, loaded by the Oracle's own engine) on the jobs [`Trust::offer_ticket`] picked.
//!
//! For each ticket it evaluates the job's context and then the Scout's own answer with teacher
//! forcing, scores the answer ([`agreement::score`]), signs the record and updates the Scout's
//! standing. It works off a bounded queue, apart from the decoding loop, so the Oracle never
//! waits on a ticket; a full queue drops the ticket (and counts it). It keeps a session per
//! recent sequence ([`SESSIONS`]) and reuses its longest common prefix, so consecutive tickets
//! of one sequence cost their delta.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;

use shard_shared::wire::WireSampling;

use super::agreement::{self, Agreement, AgreementRule};
use super::standing::Observed;
use super::{ticket, Trust};
use crate::engine::generate::Session;
use crate::engine::model::Logits;
use crate::engine::Engine;

/// Tickets waiting for the checker; more are dropped.
pub const QUEUE: usize = 256;
/// Sessions kept by default, one per recently checked sequence (least recently used goes
/// first). A KV cache grows with what it holds, so an idle one costs little; more sequences in
/// flight than sessions make tickets re-evaluate their whole context.
pub const SESSIONS: usize = 16;

/// An answered job picked as a ticket: what the Scout was sent and what it answered.
#[derive(Debug, Clone)]
pub struct TicketJob {
    pub peer: PeerId,
    pub job_id: u64,
    pub sequence: u64,
    /// The whole context (a delta job's, resolved).
    pub context: Vec<u32>,
    pub k: u8,
    pub sampling: WireSampling,
    pub seed: u64,
    pub answer: Vec<u32>,
    /// The Scout refused the job (busy, "wrong model", "bad context") although it was for the
    /// model the Scout said it holds and within its bounds: it scores as a ticket with no
    /// position agreeing. Honest Scouts do not refuse such jobs (a hidden tab disconnects).
    pub refused: bool,
    pub observed: Observed,
}

/// The reference draft model and its session.
pub struct Reference {
    engine: Engine,
    /// (sequence, its session), least recently used first.
    sessions: Vec<(u64, Session)>,
    max_sessions: usize,
    model_sha256: [u8; 32],
    rule: AgreementRule,
}

impl Reference {
    /// The longest context a Scout can draft after, with `k` tokens: longer jobs would be
    /// refused by an honest Scout, so the scheduler does not send them.
    pub fn max_context(&self, k: usize) -> usize {
        self.engine.n_ctx.saturating_sub(k + 1)
    }

    /// `engine` must be the Scouts' draft model file, whose sha256 is `model_sha256`.
    pub fn new(engine: Engine, model_sha256: [u8; 32], rule: AgreementRule) -> Self {
        Self { engine, sessions: vec![], max_sessions: SESSIONS, model_sha256, rule }
    }

    /// Keeps up to `n` sessions (at least one).
    pub fn with_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n.max(1);
        self
    }

    /// The reference's logits at each answer position: after the context, then after each of
    /// the answer's tokens but the last. `None` when the job does not fit the reference (an
    /// empty context, or past its context length) or names tokens outside its vocabulary.
    pub fn rows(&mut self, sequence: u64, context: &[u32], answer: &[u32]) -> Option<Vec<Vec<f32>>> {
        let n_vocab = self.engine.model.config.n_vocab;
        if context.is_empty() || answer.is_empty() || context.len() + answer.len() >= self.engine.n_ctx {
            return None;
        }
        if context.iter().chain(answer).any(|&t| t as usize >= n_vocab) {
            return None;
        }
        self.touch(sequence);
        let (engine, session) = (&self.engine, &mut self.sessions.last_mut().expect("touched").1);
        let mut rows = vec![session.extend_to(engine, context)];
        if answer.len() > 1 {
            let rest = session.eval(engine, &answer[..answer.len() - 1], Logits::All);
            rows.extend(rest.chunks(n_vocab).map(<[f32]>::to_vec));
        }
        Some(rows)
    }

    /// Makes the session of `sequence` the last (most recent) one: its own, or the least
    /// recently used one (whose prefix may still be shared, a system prompt say), or a new one.
    fn touch(&mut self, sequence: u64) {
        let entry = match self.sessions.iter().position(|(s, _)| *s == sequence) {
            Some(i) => self.sessions.remove(i),
            None if self.sessions.len() >= self.max_sessions => (sequence, self.sessions.remove(0).1),
            None => (sequence, Session::new(&self.engine)),
        };
        self.sessions.push(entry);
    }

    /// Scores a ticket: the agreement, the reference's own answer (greedy, or its replay of the
    /// Scout's seeded draws; for the record's hash) and the job's hash. A job that does not fit
    /// scores as void.
    pub fn check(&mut self, job: &TicketJob) -> (Agreement, Vec<u32>, [u8; 32]) {
        let job_sha256 = ticket::job_hash(&job.context, job.k, &job.sampling, job.seed, &self.model_sha256);
        if job.refused {
            let k = job.k as u32;
            // No float noise explains a refusal: every position is a decisive disagreement.
            return (Agreement { positions: k, counted: k, agreed: 0, decisive: k }, vec![], job_sha256);
        }
        // (The scheduler never offers answers with tokens outside the vocabulary: it strikes them.)
        let Some(rows) = self.rows(job.sequence, &job.context, &job.answer) else {
            return (Agreement { positions: job.answer.len() as u32, ..Agreement::default() }, vec![], job_sha256);
        };
        let reference = agreement::reference_answer(rows.iter().map(Vec::as_slice), &job.sampling, job.seed);
        let a = agreement::score(rows.iter().map(Vec::as_slice), &job.answer, &job.sampling, job.seed, &self.rule);
        (a, reference, job_sha256)
    }
}

/// Starts the checker thread and connects it to `trust`.
pub fn start(reference: Reference, trust: Arc<Trust>) -> std::thread::JoinHandle<()> {
    let (tx, rx) = sync_channel(QUEUE);
    trust.attach_checker(tx);
    std::thread::Builder::new().name("ticket-checker".into()).spawn(move || run(reference, trust, rx)).expect("spawning a thread")
}

fn run(mut reference: Reference, trust: Arc<Trust>, rx: Receiver<TicketJob>) {
    while let Ok(job) = rx.recv() {
        let started = Instant::now();
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reference.check(&job)));
        let Ok((agreement, reference_tokens, job_sha256)) = checked else {
            tracing::error!(peer = %job.peer, "the ticket checker panicked on a job; its session is reset");
            reference.sessions.clear();
            continue;
        };
        trust.tickets.check_micros.fetch_add(started.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = trust.record_ticket(&job, job_sha256, &reference_tokens, agreement) {
            tracing::error!(peer = %job.peer, "recording a ticket failed: {e}");
        }
    }
}
