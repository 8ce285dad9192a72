//! Draft jobs for Scouts, behind the Oracle's [`DraftSource`] trait.
//!
//! The decoding loop never waits here. Each call to [`ScoutDrafts::draft`]:
//! 1. uses the newest draft a Scout returned for the sequence, if it still fits: the draft
//!    was made for a prefix of today's context, and the tokens decoded since agree with its
//!    start (so a draft that arrives a few tokens late still helps);
//! 2. sends the Scout assigned to the sequence a job for today's context, unless one is in
//!    flight, as a delta against that Scout's last job for the sequence where it can.
//!
//! A Scout that drops, stalls past the job timeout or refuses loses the sequence to another.
//! Whatever a Scout answers, the verifier decides what is kept, so a wrong draft costs only
//! its verification. Each answer may also become a golden ticket ([`Trust::offer_ticket`]),
//! chosen after it arrived, so no job can be told from one; banned Scouts get no jobs, and
//! new sequences go to equally busy Scouts in a round robin weighted by reputation (a new Scout
//! still gets its share, to prove itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use shard_shared::wire::{
    Context, DraftJob, DraftOutcome, DraftReply, ModelRef, Refusal, WireSampling, MAX_CONTEXT_TOKENS, MAX_DRAFT_TOKENS,
    MAX_FRAME_BYTES,
};

use crate::spec::draft::{Draft, DraftRequest, DraftSource};
use crate::trust::checker::TicketJob;
use crate::trust::standing::Observed;
use crate::trust::{PeerStanding, Trust};

/// A job for the node task to send.
#[derive(Debug)]
pub struct Outgoing {
    pub peer: PeerId,
    pub job: DraftJob,
}

/// Tuning for the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most tokens to ask a Scout for: more than the verifier takes at once, so a late draft
    /// still covers the tokens decoded while it travelled.
    pub job_k: usize,
    /// A job unanswered for this long (or four times what the Scout's speed predicts, if more)
    /// is given up, and the sequence moves to another Scout.
    pub job_timeout: Duration,
    /// How long a job should take: a Scout gets as many tokens as its measured speed drafts in
    /// this time (at least 2, at most `job_k`), so a slow Scout (a CPU, an emulated GPU) gets
    /// short jobs it can finish rather than long ones that time out.
    pub job_budget: Duration,
    /// Strikes (timeouts, invalid answers) after which a Scout gets no more work.
    pub max_strikes: u32,
    /// One strike is forgiven per this long without a new one, so that an honest Scout's rare
    /// failures (a network blip, a closed laptop) do not add up to exclusion over a long life.
    pub strike_decay: Duration,
    /// Longest context sent: what the draft model can take with `job_k` more tokens (an honest
    /// Scout refuses longer ones, and a refusal counts against it).
    pub max_context: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            job_k: 16,
            job_timeout: Duration::from_secs(2),
            job_budget: Duration::from_millis(800),
            max_strikes: 8,
            strike_decay: Duration::from_secs(300),
            max_context: MAX_CONTEXT_TOKENS,
        }
    }
}

/// Jobs stalled in a row (given up, never answered) that cost a Scout one strike.
pub const STALLS_PER_STRIKE: u32 = 3;

/// Per-Scout figures, as `/api/swarm` shows them.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ScoutStats {
    pub jobs_sent: u64,
    pub jobs_answered: u64,
    pub jobs_refused: u64,
    pub jobs_timed_out: u64,
    /// Answers that broke the rules (tokens outside the vocabulary, too many tokens).
    pub invalid_answers: u64,
    pub tokens_drafted: u64,
    /// Drafted tokens handed to the verifier, and how many it accepted.
    pub tokens_proposed: u64,
    pub tokens_accepted: u64,
    /// Moving average of the job round trip, in milliseconds.
    pub latency_ms: f64,
    /// Moving average of the round trip per drafted token, in milliseconds.
    pub ms_per_token: f64,
    /// Tokens asked for in the last job (adapted to the Scout's speed).
    pub job_k: u64,
    /// Wire bytes of the jobs sent, and what they would have been without deltas.
    pub job_bytes: u64,
    pub job_bytes_without_deltas: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScoutView {
    pub peer_id: String,
    pub role: &'static str,
    pub transport: String,
    pub backend: String,
    pub agent: String,
    pub connected_secs: u64,
    pub sequences: usize,
    pub acceptance_rate: f64,
    pub strikes: u32,
    /// Credits, reputation, tickets and ban, from the trust store.
    #[serde(flatten)]
    pub standing: PeerStanding,
    #[serde(flatten)]
    pub stats: ScoutStats,
}

/// A job sent and not yet answered: what a ticket needs to re-draft it.
struct Sent {
    at: Instant,
    k: u8,
    sampling: WireSampling,
    seed: u64,
}

struct Scout {
    transport: String,
    backend: String,
    agent: String,
    since: Instant,
    strikes: u32,
    /// When the last strike was given, or last forgiven.
    last_strike: Instant,
    /// Jobs given up in a row without an answer (a late answer resets it): a Scout that says
    /// hello and never answers ranks last for new sequences, and every
    /// [`STALLS_PER_STRIKE`] such jobs cost it a strike.
    stalls: u32,
    stats: ScoutStats,
    /// The last job's id and context per sequence: the base for the next delta.
    last: HashMap<u64, (u64, Vec<u32>)>,
    /// Jobs sent and not yet answered.
    outstanding: HashMap<u64, Sent>,
}

impl Scout {
    fn strike(&mut self) {
        self.strikes += 1;
        self.last_strike = Instant::now();
    }

    /// Forgives one strike per `decay` since the last strike (or the last forgiveness).
    fn forgive(&mut self, now: Instant, decay: Duration) {
        if self.strikes == 0 || decay.is_zero() {
            return;
        }
        let periods = (now.duration_since(self.last_strike).as_nanos() / decay.as_nanos()).min(self.strikes as u128) as u32;
        if periods > 0 {
            self.strikes -= periods;
            self.last_strike += decay * periods;
        }
    }
}

/// What a ticket's record keeps of the Scout's figures.
fn observed(st: &ScoutStats, since: Instant) -> Observed {
    Observed {
        acceptance: (st.tokens_proposed > 0).then(|| st.tokens_accepted as f64 / st.tokens_proposed as f64),
        latency_ms: st.latency_ms,
        connected_secs: since.elapsed().as_secs(),
    }
}

struct InFlight {
    job_id: u64,
    peer: PeerId,
    sent: Instant,
    timeout: Duration,
}

struct Ready {
    peer: PeerId,
    context: Vec<u32>,
    tokens: Vec<u32>,
}

#[derive(Default)]
struct Sequence {
    scout: Option<PeerId>,
    in_flight: Option<InFlight>,
    ready: Option<Ready>,
    /// Who made the draft last handed to the verifier, for the feedback.
    proposed_by: Option<PeerId>,
}

#[derive(Default)]
struct State {
    scouts: HashMap<PeerId, Scout>,
    sequences: HashMap<u64, Sequence>,
    next_job: u64,
    /// Answers for jobs no longer wanted (late, or for a sequence that ended).
    stale_answers: u64,
}

/// The Scouts' draft source.
pub struct ScoutDrafts {
    state: Mutex<State>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    model: ModelRef,
    n_vocab: usize,
    config: SchedulerConfig,
    /// Credits for accepted drafts, and who may read request text.
    trust: Option<Arc<Trust>>,
    /// Keys the seeds Scouts draft with (see [`ScoutDrafts::job_seed`]); random per process.
    seed_key: [u8; 32],
}

impl ScoutDrafts {
    pub fn new(
        model: ModelRef,
        n_vocab: usize,
        config: SchedulerConfig,
        trust: Option<Arc<Trust>>,
    ) -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (outbox, rx) = mpsc::unbounded_channel();
        let seed_key = rand08::random();
        (Self { state: Mutex::new(State::default()), outbox, model, n_vocab, config, trust, seed_key }, rx)
    }

    /// The seed a Scout drafts job `job_id` of `sequence` with. It is never the request's own
    /// seed: that one also drives the Oracle's accept/reject draws, and a Scout that knew it
    /// could replay the generator and steer which tokens a sampled request gets. A keyed hash
    /// of the job tells the Scout nothing about the request's seed or other jobs' seeds.
    fn job_seed(&self, sequence: u64, job_id: u64) -> u64 {
        let mut h = Sha256::new();
        h.update(self.seed_key);
        h.update(sequence.to_le_bytes());
        h.update(job_id.to_le_bytes());
        u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    pub fn model(&self) -> &ModelRef {
        &self.model
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Scout introduced itself with the right model.
    pub fn add_scout(&self, peer: PeerId, transport: String, backend: String, agent: String) {
        let mut s = self.lock();
        s.scouts.entry(peer).or_insert_with(|| Scout {
            transport,
            backend,
            agent,
            since: Instant::now(),
            strikes: 0,
            last_strike: Instant::now(),
            stalls: 0,
            stats: ScoutStats::default(),
            last: HashMap::new(),
            outstanding: HashMap::new(),
        });
    }

    /// A Scout left: its sequences go to others at their next step.
    pub fn remove_scout(&self, peer: &PeerId) {
        let mut s = self.lock();
        s.scouts.remove(peer);
        for seq in s.sequences.values_mut() {
            if seq.scout.as_ref() == Some(peer) {
                seq.scout = None;
            }
            if seq.in_flight.as_ref().is_some_and(|f| &f.peer == peer) {
                seq.in_flight = None;
            }
        }
    }

    pub fn is_scout(&self, peer: &PeerId) -> bool {
        self.lock().scouts.contains_key(peer)
    }

    /// A Scout answered a job.
    pub fn on_reply(&self, peer: PeerId, reply: DraftReply) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(scout) = s.scouts.get_mut(&peer) else { return };
        // Every answer measures the Scout's speed, a late one too: that is how a slow Scout's
        // jobs shrink until it answers in time.
        let Some(sent) = scout.outstanding.remove(&reply.job_id) else {
            s.stale_answers += 1; // never sent to this peer, or long forgotten
            return;
        };
        let ms = sent.at.elapsed().as_secs_f64() * 1e3;
        scout.stalls = 0;
        let st = &mut scout.stats;
        st.jobs_answered += 1;
        st.latency_ms = if st.jobs_answered == 1 { ms } else { st.latency_ms * 0.9 + ms * 0.1 };
        if let DraftOutcome::Drafted { tokens, .. } = &reply.outcome {
            if !tokens.is_empty() {
                let per = ms / tokens.len() as f64;
                st.ms_per_token = if st.ms_per_token == 0.0 { per } else { st.ms_per_token * 0.7 + per * 0.3 };
            }
        }
        // Find the sequence waiting on this job from this peer.
        let Some((&seq_id, seq)) = s
            .sequences
            .iter_mut()
            .find(|(_, q)| q.in_flight.as_ref().is_some_and(|f| f.job_id == reply.job_id && f.peer == peer))
        else {
            s.stale_answers += 1;
            return;
        };
        seq.in_flight = None;
        match reply.outcome {
            DraftOutcome::Drafted { tokens, .. } => {
                if tokens.len() > MAX_DRAFT_TOKENS || tokens.iter().any(|&t| t as usize >= self.n_vocab) {
                    st.invalid_answers += 1;
                    scout.strike();
                    return;
                }
                st.tokens_drafted += tokens.len() as u64;
                let context = scout.last.get(&seq_id).filter(|(job, _)| *job == reply.job_id).map(|(_, c)| c.clone());
                if let Some(context) = context {
                    if let Some(trust) = &self.trust {
                        let observed = observed(st, scout.since);
                        trust.offer_ticket(TicketJob {
                            peer,
                            job_id: reply.job_id,
                            sequence: seq_id,
                            context: context.clone(),
                            k: sent.k,
                            sampling: sent.sampling,
                            seed: sent.seed,
                            answer: tokens.clone(),
                            refused: false,
                            observed,
                        });
                    }
                    seq.ready = Some(Ready { peer, context, tokens });
                }
            }
            DraftOutcome::Refused(why) => {
                st.jobs_refused += 1;
                if why == Refusal::UnknownBase {
                    scout.last.remove(&seq_id);
                } else {
                    // Busy, wrong model or a context it cannot take: try another Scout. The job
                    // was for the Scout's model and within its bounds, so the refusal may be
                    // taken as a ticket that fails (see `TicketJob::refused`).
                    seq.scout = None;
                    let context = scout.last.get(&seq_id).filter(|(job, _)| *job == reply.job_id).map(|(_, c)| c.clone());
                    if let (Some(trust), Some(context)) = (&self.trust, context) {
                        let observed = observed(st, scout.since);
                        trust.offer_ticket(TicketJob {
                            peer,
                            job_id: reply.job_id,
                            sequence: seq_id,
                            context,
                            k: sent.k,
                            sampling: sent.sampling,
                            seed: sent.seed,
                            answer: vec![],
                            refused: true,
                            observed,
                        });
                    }
                }
            }
        }
    }

    /// A job was lost (timeout, closed stream, a malformed answer).
    pub fn on_failure(&self, peer: PeerId, job_id: u64) {
        let mut s = self.lock();
        // A job the scheduler already gave up on (stalled) was counted then; count the rest.
        let mut counted = false;
        for seq in s.sequences.values_mut() {
            if seq.in_flight.as_ref().is_some_and(|f| f.job_id == job_id && f.peer == peer) {
                seq.in_flight = None;
                seq.scout = None;
                counted = true;
            }
        }
        if let Some(scout) = s.scouts.get_mut(&peer) {
            if counted {
                scout.stats.jobs_timed_out += 1;
                scout.strike();
            }
            scout.last.retain(|_, (job, _)| *job != job_id);
            scout.outstanding.remove(&job_id);
        }
    }

    /// The Scouts as `/api/swarm` shows them.
    pub fn snapshot(&self) -> (Vec<ScoutView>, u64) {
        let s = self.lock();
        let mut views: Vec<ScoutView> = s
            .scouts
            .iter()
            .map(|(peer, sc)| ScoutView {
                peer_id: peer.to_string(),
                role: "scout",
                transport: sc.transport.clone(),
                backend: sc.backend.clone(),
                agent: sc.agent.clone(),
                connected_secs: sc.since.elapsed().as_secs(),
                sequences: s.sequences.values().filter(|q| q.scout.as_ref() == Some(peer)).count(),
                acceptance_rate: if sc.stats.tokens_proposed == 0 {
                    0.0
                } else {
                    sc.stats.tokens_accepted as f64 / sc.stats.tokens_proposed as f64
                },
                strikes: sc.strikes,
                standing: self.trust.as_ref().map_or_else(PeerStanding::default, |t| t.standing(peer)),
                stats: sc.stats.clone(),
            })
            .collect();
        views.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        (views, s.stale_answers)
    }

    /// Sends the sequence's Scout a job for `context`, unless one is in flight.
    fn dispatch(&self, s: &mut State, sequence: u64, context: &[u32], sampling: &WireSampling) {
        // A job past the wire bounds would be refused by the codec on the Scout's side, and
        // the closed stream would count against an honest Scout: the Oracle decodes alone.
        if context.len() > MAX_CONTEXT_TOKENS.min(self.config.max_context) {
            return;
        }
        let now = Instant::now();
        let max_strikes = self.config.max_strikes;
        let State { scouts, sequences, next_job, .. } = s;
        for sc in scouts.values_mut() {
            sc.forgive(now, self.config.strike_decay);
        }
        let seq = sequences.entry(sequence).or_default();
        if let Some(f) = &seq.in_flight {
            if now.duration_since(f.sent) < f.timeout {
                return;
            }
            // Stalled: give the sequence to someone else. Slowness alone is not misbehaviour
            // (a late answer still teaches the job size, and resets the count), but a Scout
            // that never answers loses its standing.
            if let Some(sc) = scouts.get_mut(&f.peer) {
                sc.stats.jobs_timed_out += 1;
                sc.stalls += 1;
                if sc.stalls % STALLS_PER_STRIKE == 0 {
                    sc.strike();
                }
            }
            seq.in_flight = None;
            seq.scout = None;
        }
        let trust = self.trust.as_deref();
        let eligible = |p: &PeerId, sc: &Scout| sc.strikes < max_strikes && trust.is_none_or(|t| t.may_draft(p));
        let keep = seq.scout.filter(|p| scouts.get(p).is_some_and(|sc| eligible(p, sc)));
        let peer = match keep {
            Some(p) => p,
            None => {
                // A Scout that answers before one whose last jobs stalled; then the least busy;
                // then the one with the least work so far for its reputation (a weighted round
                // robin: more reputable Scouts get sequences more often, and a new one still
                // gets its share, to prove itself); then the cleanest record; then the peer id,
                // so that the choice does not depend on the map's order.
                let mut load: HashMap<PeerId, usize> = HashMap::new();
                for q in sequences.values() {
                    if let Some(p) = q.scout {
                        *load.entry(p).or_default() += 1;
                    }
                }
                let reputation = |p: &PeerId| trust.map_or(0.0, |t| t.standing(p).reputation);
                let best = scouts
                    .iter()
                    .filter(|(p, sc)| eligible(p, sc))
                    .map(|(p, sc)| (p, sc, reputation(p)))
                    .min_by(|(pa, a, ra), (pb, b, rb)| {
                        let la = load.get(pa).copied().unwrap_or(0);
                        let lb = load.get(pb).copied().unwrap_or(0);
                        let wa = a.stats.jobs_sent as f64 / ra.max(0.05);
                        let wb = b.stats.jobs_sent as f64 / rb.max(0.05);
                        a.stalls
                            .cmp(&b.stalls)
                            .then(la.cmp(&lb))
                            .then(wa.total_cmp(&wb))
                            .then(a.strikes.cmp(&b.strikes))
                            .then(pa.cmp(pb))
                    })
                    .map(|(p, _, _)| *p);
                let Some(p) = best else { return };
                p
            }
        };
        let seq = sequences.get_mut(&sequence).expect("inserted above");
        seq.scout = Some(peer);
        let scout = scouts.get_mut(&peer).expect("eligible scouts exist");
        *next_job += 1;
        let job_id = *next_job;
        let wire_context = match scout.last.get(&sequence) {
            Some((base_job, base)) => {
                let keep = base.iter().zip(context).take_while(|(a, b)| a == b).count();
                if keep > 0 {
                    Context::Delta { base_job: *base_job, keep: keep as u32, append: context[keep..].to_vec() }
                } else {
                    Context::Full(context.to_vec())
                }
            }
            None => Context::Full(context.to_vec()),
        };
        // As many tokens as this Scout drafts in the budget; a new Scout starts with a few.
        let max_k = self.config.job_k.clamp(1, MAX_DRAFT_TOKENS);
        let k = match scout.stats.ms_per_token {
            m if m > 0.0 => ((self.config.job_budget.as_secs_f64() * 1e3 / m) as usize).clamp(2.min(max_k), max_k),
            _ => 4.min(max_k),
        };
        let expected = Duration::from_secs_f64(scout.stats.ms_per_token.max(0.0) * k as f64 / 1e3);
        let timeout = self.config.job_timeout.max(expected * 4);
        let job = DraftJob {
            job_id,
            sequence,
            context: wire_context,
            k: k as u8,
            sampling: sampling.clone(),
            seed: self.job_seed(sequence, job_id),
            model: self.model.clone(),
        };
        let bytes = shard_shared::wire::encode(&job).len() as u64;
        if bytes as usize > MAX_FRAME_BYTES {
            return;
        }
        let full_bytes = if matches!(job.context, Context::Full(_)) {
            bytes
        } else {
            shard_shared::wire::encode(&DraftJob { context: Context::Full(context.to_vec()), ..job.clone() }).len() as u64
        };
        let seed = job.seed;
        if self.outbox.send(Outgoing { peer, job }).is_err() {
            return; // the node is gone; decode alone
        }
        scout.last.insert(sequence, (job_id, context.to_vec()));
        scout.outstanding.retain(|_, sent| now.duration_since(sent.at) < Duration::from_secs(60));
        scout.outstanding.insert(job_id, Sent { at: now, k: k as u8, sampling: sampling.clone(), seed });
        scout.stats.jobs_sent += 1;
        scout.stats.job_k = k as u64;
        scout.stats.job_bytes += bytes;
        scout.stats.job_bytes_without_deltas += full_bytes;
        seq.in_flight = Some(InFlight { job_id, peer, sent: now, timeout });
    }
}

impl DraftSource for ScoutDrafts {
    fn name(&self) -> &str {
        "scouts"
    }

    fn trusted(&self) -> bool {
        false
    }

    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft> {
        let mut s = self.lock();
        if s.scouts.is_empty() || req.context.is_empty() {
            return None;
        }
        let seq = s.sequences.entry(req.sequence).or_default();
        // 1. A draft at hand that still continues this context.
        let usable = seq.ready.as_ref().and_then(|r| {
            let rest = req.context.strip_prefix(r.context.as_slice())?;
            let after = r.tokens.strip_prefix(rest)?;
            (!after.is_empty()).then(|| (r.peer, after[..after.len().min(req.k)].to_vec()))
        });
        match &usable {
            Some((peer, _)) => seq.proposed_by = Some(*peer),
            // Overtaken or contradicted by what was decoded: drop it.
            None => seq.ready = None,
        }
        let draft = usable.map(|(peer, tokens)| {
            if let Some(sc) = s.scouts.get_mut(&peer) {
                sc.stats.tokens_proposed += tokens.len() as u64;
            }
            Draft { tokens, q: None }
        });
        // 2. Ask for the next one.
        self.dispatch(&mut s, req.sequence, req.context, &WireSampling::from(req.sampling));
        draft
    }

    fn feedback(&self, sequence: u64, _proposed: usize, accepted: usize) {
        let mut s = self.lock();
        let Some(peer) = s.sequences.get(&sequence).and_then(|q| q.proposed_by) else { return };
        if let Some(sc) = s.scouts.get_mut(&peer) {
            sc.stats.tokens_accepted += accepted as u64;
        }
        if let Some(t) = &self.trust {
            t.earn(peer, accepted);
        }
    }

    fn finished(&self, sequence: u64) {
        let mut s = self.lock();
        s.sequences.remove(&sequence);
        for sc in s.scouts.values_mut() {
            sc.last.remove(&sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard_shared::sampling::SamplingParams;

    fn setup() -> (ScoutDrafts, mpsc::UnboundedReceiver<Outgoing>, PeerId) {
        let (s, rx) = ScoutDrafts::new(ModelRef { id: "d".into(), sha256: [0; 32] }, 100, SchedulerConfig::default(), None);
        let peer = PeerId::random();
        s.add_scout(peer, "tcp".into(), "cpu".into(), "test".into());
        (s, rx, peer)
    }

    fn ask<'a>(context: &'a [u32], params: &'a SamplingParams) -> DraftRequest<'a> {
        DraftRequest { sequence: 1, context, k: 4, sampling: params, seed: 0 }
    }

    /// A context past the wire bound is not sent (the Scout's codec would refuse it and the
    /// closed stream would strike an honest Scout); the Oracle decodes alone.
    #[test]
    fn jobs_past_the_wire_bounds_are_not_sent() {
        let (s, mut rx, _peer) = setup();
        let p = SamplingParams::greedy();
        let long: Vec<u32> = (0..MAX_CONTEXT_TOKENS as u32 + 1).map(|t| t % 100).collect();
        assert!(s.draft(&ask(&long, &p)).is_none());
        assert!(rx.try_recv().is_err());
        assert!(s.draft(&ask(&long[..MAX_CONTEXT_TOKENS], &p)).is_none());
        let job = rx.try_recv().unwrap().job;
        assert!(shard_shared::wire::encode(&job).len() <= MAX_FRAME_BYTES);
        assert_eq!(s.snapshot().0[0].strikes, 0);
    }

    /// A Scout that says hello and never answers does not keep the sequences it stalls, nor
    /// win new ones from a Scout that answers, and its stalls cost it strikes.
    #[test]
    fn silent_scouts_lose_their_sequences_and_standing() {
        let config = SchedulerConfig { job_timeout: Duration::from_millis(20), ..SchedulerConfig::default() };
        let (s, mut rx) = ScoutDrafts::new(ModelRef { id: "d".into(), sha256: [0; 32] }, 100, config, None);
        let (silent, honest) = (PeerId::random(), PeerId::random());
        s.add_scout(silent, "tcp".into(), "cpu".into(), "silent".into());
        let p = SamplingParams::greedy();
        let ask_seq = |sequence: u64, context: &[u32]| {
            s.draft(&DraftRequest { sequence, context, k: 4, sampling: &p, seed: 0 });
        };
        ask_seq(1, &[1]);
        assert_eq!(rx.try_recv().unwrap().peer, silent);
        s.add_scout(honest, "tcp".into(), "cpu".into(), "honest".into());
        std::thread::sleep(Duration::from_millis(30));
        // The stalled sequence moves to the Scout that has not stalled.
        ask_seq(1, &[1, 2]);
        let job = rx.try_recv().unwrap();
        assert_eq!(job.peer, honest);
        s.on_reply(
            honest,
            DraftReply { job_id: job.job.job_id, outcome: DraftOutcome::Drafted { tokens: vec![3], probs: None } },
        );
        // A new sequence goes to the busier Scout that answers, not the idle one that stalled.
        ask_seq(2, &[5]);
        assert_eq!(rx.try_recv().unwrap().peer, honest);
        // With no one else free, the silent Scout gets work, stalls, and pays a strike per
        // STALLS_PER_STRIKE stalls.
        s.remove_scout(&honest);
        for n in 0..STALLS_PER_STRIKE {
            ask_seq(3, &[7 + n]);
            while rx.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(30));
        }
        ask_seq(3, &[20]);
        let view = s.snapshot().0.into_iter().find(|v| v.agent == "silent").unwrap();
        assert!(view.strikes >= 1, "{view:?}");
    }

    /// Strikes decay: a Scout that failed gets work again once enough time has passed.
    #[test]
    fn strikes_decay() {
        let config = SchedulerConfig { max_strikes: 1, strike_decay: Duration::from_millis(300), ..SchedulerConfig::default() };
        let (s, mut rx) = ScoutDrafts::new(ModelRef { id: "d".into(), sha256: [0; 32] }, 100, config, None);
        let peer = PeerId::random();
        s.add_scout(peer, "tcp".into(), "cpu".into(), "test".into());
        let p = SamplingParams::greedy();
        s.draft(&ask(&[1], &p));
        let job = rx.try_recv().unwrap().job;
        s.on_failure(peer, job.job_id);
        assert_eq!(s.snapshot().0[0].strikes, 1);
        // Struck out: no job for now.
        s.draft(&ask(&[1, 2], &p));
        assert!(rx.try_recv().is_err());
        std::thread::sleep(Duration::from_millis(350));
        s.draft(&ask(&[1, 2, 3], &p));
        assert!(rx.try_recv().is_ok(), "the strike was forgiven");
        assert_eq!(s.snapshot().0[0].strikes, 0);
    }

    /// Scouts never learn the request's seed, which also drives the Oracle's acceptance draws.
    #[test]
    fn jobs_carry_a_keyed_seed_not_the_requests() {
        let (s, mut rx, peer) = setup();
        let p = SamplingParams::default();
        let seed = 42;
        let mut seeds = Vec::new();
        for n in 1..6u32 {
            let context: Vec<u32> = (1..=n).collect();
            s.draft(&DraftRequest { sequence: 1, context: &context, k: 4, sampling: &p, seed });
            let job = rx.try_recv().unwrap().job;
            assert_ne!(job.seed, seed);
            seeds.push(job.seed);
            s.on_reply(peer, DraftReply { job_id: job.job_id, outcome: DraftOutcome::Refused(Refusal::Busy) });
        }
        seeds.sort();
        seeds.dedup();
        assert_eq!(seeds.len(), 5, "every job gets its own seed");
        // Another Oracle process (another key) gives the same job another seed.
        let (other, _rx) = ScoutDrafts::new(ModelRef { id: "d".into(), sha256: [0; 32] }, 100, SchedulerConfig::default(), None);
        assert_ne!(other.job_seed(1, 1), s.job_seed(1, 1));
    }

    #[test]
    fn never_waits_then_uses_late_drafts_and_sends_deltas() {
        let (s, mut rx, peer) = setup();
        let p = SamplingParams::greedy();
        // No draft yet: None at once, and a full job goes out.
        assert!(s.draft(&ask(&[1, 2, 3], &p)).is_none());
        let job = rx.try_recv().unwrap().job;
        assert_eq!(job.context, Context::Full(vec![1, 2, 3]));
        // While it is in flight, no second job.
        assert!(s.draft(&ask(&[1, 2, 3, 7], &p)).is_none());
        assert!(rx.try_recv().is_err());
        // The answer arrives late: the Oracle already decoded 7 itself, which the draft agrees with.
        s.on_reply(
            peer,
            DraftReply { job_id: job.job_id, outcome: DraftOutcome::Drafted { tokens: vec![7, 8, 9], probs: None } },
        );
        let d = s.draft(&ask(&[1, 2, 3, 7], &p)).unwrap();
        assert_eq!(d.tokens, vec![8, 9]);
        s.feedback(1, 2, 2);
        // The next job is a delta against the last one.
        let job2 = rx.try_recv().unwrap().job;
        assert_eq!(job2.context, Context::Delta { base_job: job.job_id, keep: 3, append: vec![7] });
        // A draft that disagrees with what was decoded is dropped, not used.
        s.on_reply(peer, DraftReply { job_id: job2.job_id, outcome: DraftOutcome::Drafted { tokens: vec![5, 5], probs: None } });
        assert!(s.draft(&ask(&[1, 2, 3, 7, 8], &p)).is_none());
        let (views, _) = s.snapshot();
        assert_eq!((views[0].stats.tokens_proposed, views[0].stats.tokens_accepted), (2, 2));
    }

    #[test]
    fn hostile_answers_are_ignored_and_counted() {
        let (s, mut rx, peer) = setup();
        let p = SamplingParams::greedy();
        s.draft(&ask(&[1], &p));
        let job = rx.try_recv().unwrap().job;
        // Out-of-vocabulary tokens: invalid, nothing kept.
        s.on_reply(peer, DraftReply { job_id: job.job_id, outcome: DraftOutcome::Drafted { tokens: vec![1000], probs: None } });
        assert!(s.draft(&ask(&[1], &p)).is_none());
        // An answer to a job never sent: stale.
        s.on_reply(peer, DraftReply { job_id: 999, outcome: DraftOutcome::Drafted { tokens: vec![1], probs: None } });
        let (views, stale) = s.snapshot();
        assert_eq!((views[0].stats.invalid_answers, stale), (1, 1));
        // A Scout that leaves loses its sequences; with none left, the Oracle decodes alone.
        s.remove_scout(&peer);
        assert!(s.draft(&ask(&[1, 2], &p)).is_none());
    }
}
