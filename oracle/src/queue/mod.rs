//! The request queue in front of the engine: priority tiers, bounded rooms, live positions.
//!
//! One engine thread ([`scheduler`]) decodes up to `--parallel` requests at once, one slot
//! each, in shared forward passes. Requests wait for a slot in one bounded room per [`Tier`]
//! (Oracle > Scout > Leech), so under load the Leech room fills and refuses first (the API
//! answers 429 with `Retry-After`) while Oracle and Scout requests are still admitted. A free
//! slot takes the highest tier's oldest request, except that every [`LOWER_SHARE`]-th pick
//! goes to the oldest request of a lower tier while one waits: Leeches are slowed by a crowd
//! of higher tiers, never starved by it. A request whose client left while it waited is
//! dropped without running.
//!
//! Every accepted request holds a ticket: a random id, so that nobody can enumerate other
//! people's requests. Its place in line is counted from the rooms themselves (every request
//! waiting in a higher tier, the older ones in its own, and one running request when every
//! slot is taken), so it stays right when a higher tier jumps ahead or requests finish out of
//! order; a [`Submission`] turns it into live [`QueueStatus`] updates (the web app's
//! "position 3, about 12 s"), and `GET /api/queue/{ticket}` answers the same for whoever
//! holds the id.
//!
//! Each request's events go through a bounded channel. A client that stops reading fills it
//! (the socket's buffers first, then the channel); once it has stayed full for
//! [`STALL_GRACE`] the job is cancelled and its slot freed, so a client that never reads
//! cannot hold the engine or grow the Oracle's memory. The engine thread never blocks on a
//! client: events wait in the request's own outbox.
//!
//! A slot's KV cache keeps its previous request's tokens, so that a conversation's next turn
//! reuses its prefix. That reuse is kept within one client ([`ClientKey`]): another client's
//! request starts from an empty cache, so neither `cached_tokens` nor timing tells anyone what
//! the previous request held.

pub mod metrics;
mod scheduler;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;
pub use shard_shared::trust::{TicketState, Tier};
use tokio::sync::{mpsc, watch};

use crate::engine::generate::{Event, Finish, GenerateError, GenerateParams};
use crate::engine::Engine;
use crate::spec::draft::DraftSource;
use crate::spec::metrics::SpecMetrics;
use crate::trust::Trust;
use metrics::StepMetrics;

/// What a queued request hears back from the worker.
#[derive(Debug)]
pub enum JobEvent {
    Event(Event),
    Finished(Result<Finish, JobError>),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("internal error while generating: {0}")]
    Internal(String),
    /// No sequence could go on for want of KV pages (`--kv-cache-tokens`), so the newest
    /// gave way.
    #[error("{0}; try again when fewer requests run")]
    CacheFull(crate::engine::kv_cache::PoolFull),
}

/// Events a request may have waiting for its client before the job counts as stalled.
pub const EVENT_BUFFER: usize = 64;
/// How long a request's event channel may stay full before the job is cancelled.
pub const STALL_GRACE: Duration = Duration::from_millis(250);
/// One pick in this many goes to a lower tier while one waits.
pub const LOWER_SHARE: u64 = 4;
/// How long a finished ticket still answers `GET /api/queue/{ticket}`.
const DONE_TICKET_TTL: Duration = Duration::from_secs(120);

/// Who sent a request, as far as reusing cached work goes: an opaque key (a hash of the
/// client's address or identity). Requests of one client may share a cached prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClientKey(pub u64);

/// How a request is queued and run.
#[derive(Debug, Clone)]
pub struct Placement {
    pub tier: Tier,
    pub client: ClientKey,
    /// The Scout whose credits pay for a Scout-tier request.
    pub payer: Option<PeerId>,
    /// Whether Scouts may read (and draft) this request's text.
    pub scouts_may_read: bool,
}

impl Placement {
    /// An anonymous Leech request from `client`.
    pub fn leech(client: ClientKey) -> Self {
        Self { tier: Tier::Leech, client, payer: None, scouts_may_read: true }
    }
}

struct Job {
    /// Place in the order of submission.
    seq: u64,
    submitted: Instant,
    ticket: String,
    placement: Placement,
    prompt: Vec<u32>,
    params: GenerateParams,
    events: mpsc::Sender<JobEvent>,
}

/// The request's tier room is full; try again after about `retry_after_secs`.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull {
    pub tier: Tier,
    pub retry_after_secs: u64,
}

/// Live figures for `/health` and the load endpoints.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Requests waiting or running.
    pub depth: AtomicUsize,
    pub completed: AtomicU64,
    pub tokens_generated: AtomicU64,
    /// Jobs cancelled because their client stopped reading (see [`STALL_GRACE`]).
    pub stalled: AtomicU64,
    /// Requests refused because their tier's room was full, per tier.
    pub refused: [AtomicU64; 3],
    /// Exponential moving average of a request's run time, in milliseconds.
    pub avg_job_ms: AtomicU64,
    pub spec: SpecMetrics,
    pub steps: StepMetrics,
}

/// Speculative decoding settings for the worker.
#[derive(Clone)]
pub struct SpecConfig {
    pub source: Arc<dyn DraftSource>,
    pub k_max: usize,
    /// Time drafting and verification, and draft only as far as it pays: for a source that
    /// drafts on the Oracle's own cores (`--draft-model`).
    pub paced: bool,
    /// The source sends request text to other machines (Scouts): requests that may not be
    /// read there are decoded without it.
    pub reads_text: bool,
}

fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Oracle => 0,
        Tier::Scout => 1,
        Tier::Leech => 2,
    }
}

/// The waiting rooms and what runs.
struct Rooms {
    waiting: [VecDeque<Job>; 3],
    /// Running requests: their place in the order of submission and when they started.
    running: Vec<(u64, Instant)>,
    /// Requests that may run at once (`--parallel`).
    slots: usize,
    picks: u64,
}

impl Rooms {
    fn len(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    /// The next request to run (see the module docs for the order).
    fn pick(&mut self) -> Option<Job> {
        let highest = (0..3).find(|&t| !self.waiting[t].is_empty())?;
        self.picks += 1;
        let lower =
            (highest + 1..3).filter(|&t| !self.waiting[t].is_empty()).min_by_key(|&t| self.waiting[t].front().map(|j| j.seq));
        let room = match lower {
            Some(t) if self.picks % LOWER_SHARE == 0 => t,
            _ => highest,
        };
        self.waiting[room].pop_front()
    }

    fn new(slots: usize) -> Self {
        Self { waiting: Default::default(), running: vec![], slots: slots.max(1), picks: 0 }
    }

    /// Whether every slot is taken: a waiting request then also waits for a running one.
    fn full(&self) -> bool {
        self.running.len() >= self.slots
    }

    /// Requests that go before `seq` of tier `tier` as things stand (plus the running one
    /// whose slot it waits for, when every slot is taken); `None` when it is not waiting.
    fn ahead_of(&self, seq: u64, tier: Tier) -> Option<u64> {
        let t = tier_index(tier);
        let pos = self.waiting[t].iter().position(|j| j.seq == seq)?;
        let higher: usize = self.waiting[..t].iter().map(VecDeque::len).sum();
        Some(self.full() as u64 + higher as u64 + pos as u64)
    }
}

struct Shared {
    rooms: Mutex<Rooms>,
    wake: Condvar,
    tickets: Mutex<HashMap<String, TicketEntry>>,
}

impl Shared {
    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, HashMap<String, TicketEntry>> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct TicketEntry {
    seq: u64,
    tier: Tier,
    issued: Instant,
    done: bool,
}

#[derive(Clone)]
pub struct InferenceQueue {
    shared: Arc<Shared>,
    /// Requests each tier's room holds.
    pub capacity: usize,
    pub stats: Arc<QueueStats>,
    next_seq: Arc<AtomicU64>,
    /// Bumped whenever a request starts or finishes, so waiting requests recount.
    changed: watch::Receiver<u64>,
}

/// How the engine thread runs requests.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Requests each tier's room holds.
    pub capacity: usize,
    /// Requests decoded together at most (`--parallel`), one KV cache each.
    pub parallel: usize,
    /// Tokens one forward pass takes at most, decoded and drafted tokens first, then chunks
    /// of new prompts (`--step-tokens`): a long prompt does not stall the others.
    pub step_tokens: usize,
    /// Positions of keys and values all slots hold together (`--kv-cache-tokens`); 0:
    /// `parallel` full contexts, which never runs out. Pages are taken as sequences grow
    /// either way.
    pub kv_cache_tokens: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { capacity: 64, parallel: 1, step_tokens: 256, kv_cache_tokens: 0 }
    }
}

/// Where a request stands in the queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStatus {
    /// The request's ticket id (random; `GET /api/queue/{ticket}`).
    pub ticket: String,
    /// Requests that run before this one, the running one included; 0 once it runs.
    pub ahead: u64,
    pub state: TicketState,
    /// A rough wait until it starts: the requests ahead times the average run time.
    pub est_wait_ms: u64,
    /// The priority tier it waits in.
    pub tier: Tier,
}

/// An accepted request: its ticket, its events and live queue updates while it waits.
pub struct Submission {
    pub ticket: String,
    rx: mpsc::Receiver<JobEvent>,
    changed: watch::Receiver<u64>,
    queue: InferenceQueue,
    waiting: bool,
}

/// The next thing a request hears.
#[derive(Debug)]
pub enum Update {
    /// Still waiting (sent when the place in line changes, and once a second for the estimate).
    Queued(QueueStatus),
    Job(JobEvent),
}

impl Submission {
    /// The next event or, while the request waits, a queue update. `None` when the worker is gone.
    pub async fn next_update(&mut self) -> Option<Update> {
        if !self.waiting {
            return self.rx.recv().await.map(Update::Job);
        }
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            biased;
            ev = self.rx.recv() => {
                self.waiting = false;
                ev.map(Update::Job)
            }
            changed = self.changed.changed() => {
                // The worker is gone: nothing more will change while waiting.
                self.waiting &= changed.is_ok();
                Some(Update::Queued(self.status()))
            }
            _ = tick => Some(Update::Queued(self.status())),
        }
    }

    /// Where this request stands now.
    pub fn status(&self) -> QueueStatus {
        self.queue.status(&self.ticket).expect("a live submission's ticket is known")
    }

    /// The next job event, skipping queue updates (for answers that are not streamed).
    pub async fn recv(&mut self) -> Option<JobEvent> {
        self.waiting = false;
        self.rx.recv().await
    }
}

impl InferenceQueue {
    /// Starts the engine thread. `capacity` bounds each tier's waiting room; `spec` turns on
    /// speculative decoding; `trust` charges Scout-tier requests.
    pub fn start(engine: Arc<Engine>, capacity: usize, spec: Option<SpecConfig>, trust: Option<Arc<Trust>>) -> Self {
        Self::start_with(engine, QueueConfig { capacity, ..QueueConfig::default() }, spec, trust)
    }

    /// [`InferenceQueue::start`] with slots and a step budget.
    pub fn start_with(engine: Arc<Engine>, config: QueueConfig, spec: Option<SpecConfig>, trust: Option<Arc<Trust>>) -> Self {
        let slots = config.parallel.max(1);
        let shared = Arc::new(Shared { rooms: Mutex::new(Rooms::new(slots)), wake: Condvar::new(), tickets: Mutex::default() });
        let stats = Arc::new(QueueStats::default());
        stats.steps.slots.store(slots, Ordering::Relaxed);
        // By default room for every slot's whole context, so the pool never runs out.
        let kv_tokens = match config.kv_cache_tokens {
            0 => slots * engine.n_ctx.div_ceil(crate::engine::kv_cache::PAGE) * crate::engine::kv_cache::PAGE,
            n => n,
        };
        let kv_pool = engine.model.kv_pool(Some(kv_tokens));
        let _ = stats.steps.kv_pool.set(kv_pool.clone());
        let (changed_tx, changed) = watch::channel(0u64);
        let worker = scheduler::Scheduler {
            engine,
            shared: shared.clone(),
            stats: stats.clone(),
            spec,
            trust,
            changed: changed_tx,
            slots,
            step_tokens: config.step_tokens.max(1),
            kv_pool,
        };
        std::thread::Builder::new().name("shard-engine".into()).spawn(move || worker.run()).expect("spawn engine thread");
        Self { shared, capacity: config.capacity.max(1), stats, next_seq: Arc::new(AtomicU64::new(0)), changed }
    }

    /// Enqueues a generation; its events and queue updates come through the [`Submission`].
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams, placement: Placement) -> Result<Submission, QueueFull> {
        let tier = placement.tier;
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let ticket = format!("{:016x}{:016x}", rand08::random::<u64>(), rand08::random::<u64>());
        let mut rooms = self.shared.rooms();
        let slots = rooms.slots as u64;
        let room = &mut rooms.waiting[tier_index(tier)];
        if room.len() >= self.capacity {
            let ahead = rooms.len() as u64 + rooms.running.len() as u64;
            drop(rooms);
            self.stats.refused[tier_index(tier)].fetch_add(1, Ordering::Relaxed);
            let avg_ms = self.stats.avg_job_ms.load(Ordering::Relaxed).max(500);
            let secs = (avg_ms * (ahead + 1)).div_ceil(1000 * slots);
            return Err(QueueFull { tier, retry_after_secs: secs.clamp(1, 600) });
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        {
            let mut tickets = self.shared.tickets();
            // Forget tickets that finished long ago (a live one is never dropped).
            tickets.retain(|_, t| !t.done || t.issued.elapsed() < DONE_TICKET_TTL);
            tickets.insert(ticket.clone(), TicketEntry { seq, tier, issued: Instant::now(), done: false });
        }
        room.push_back(Job { seq, submitted: Instant::now(), ticket: ticket.clone(), placement, prompt, params, events });
        self.stats.depth.fetch_add(1, Ordering::SeqCst);
        drop(rooms);
        self.shared.wake.notify_one();
        Ok(Submission { ticket, rx, changed: self.changed.clone(), queue: self.clone(), waiting: true })
    }

    /// Where the request holding ticket id `ticket` stands, if it is live or recent.
    pub fn status(&self, ticket: &str) -> Option<QueueStatus> {
        let (seq, tier, done) = {
            let tickets = self.shared.tickets();
            let t = tickets.get(ticket)?;
            (t.seq, t.tier, t.done)
        };
        let rooms = self.shared.rooms();
        let (ahead, state) = if done {
            (0, TicketState::Done)
        } else if rooms.running.iter().any(|&(s, _)| s == seq) {
            (0, TicketState::Running)
        } else {
            match rooms.ahead_of(seq, tier) {
                Some(n) => (n, TicketState::Waiting),
                // Between leaving its room and being marked running or done.
                None => (0, TicketState::Running),
            }
        };
        let est_wait_ms = self.wait_for(&rooms, ahead);
        drop(rooms);
        Some(QueueStatus { ticket: ticket.to_string(), ahead, state, est_wait_ms, tier })
    }

    /// What a request of `tier` submitted now would face.
    pub fn status_of_next(&self, tier: Tier) -> QueueStatus {
        let rooms = self.shared.rooms();
        let t = tier_index(tier);
        let ahead = rooms.full() as u64 + rooms.waiting[..=t].iter().map(VecDeque::len).sum::<usize>() as u64;
        let est_wait_ms = self.wait_for(&rooms, ahead);
        drop(rooms);
        QueueStatus { ticket: String::new(), ahead, state: TicketState::Waiting, est_wait_ms, tier }
    }

    /// A rough wait behind `ahead` requests: until the longest-running request's slot frees
    /// (its average run time, less what it has run), then a slot's turnover (the average run
    /// time over the slots) for each request after it. Before any request has finished, a
    /// guess of 128 single steps per request.
    fn wait_for(&self, rooms: &Rooms, ahead: u64) -> u64 {
        if ahead == 0 {
            return 0;
        }
        let guess = self.stats.spec.single_step_micros.load(Ordering::Relaxed) * 128 / 1000;
        let avg = match self.stats.avg_job_ms.load(Ordering::Relaxed) {
            0 => guess.max(1),
            ms => ms,
        };
        let ran = rooms.running.iter().map(|&(_, t)| t.elapsed().as_millis() as u64).max().unwrap_or(0);
        avg.saturating_sub(ran).max(avg / 10) + (ahead - 1) * avg / rooms.slots as u64
    }

    /// Requests waiting per tier (Oracle, Scout, Leech), and how many run.
    pub fn rooms(&self) -> ([usize; 3], usize) {
        let rooms = self.shared.rooms();
        ([rooms.waiting[0].len(), rooms.waiting[1].len(), rooms.waiting[2].len()], rooms.running.len())
    }

    /// Requests that may run at once.
    pub fn slots(&self) -> usize {
        self.shared.rooms().slots
    }

    /// Requests accepted so far.
    pub fn accepted(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(seq: u64, tier: Tier) -> Job {
        let (events, _) = mpsc::channel(1);
        Job {
            seq,
            submitted: Instant::now(),
            ticket: seq.to_string(),
            placement: Placement { tier, ..Placement::leech(ClientKey(1)) },
            prompt: vec![1],
            params: GenerateParams {
                max_tokens: 1,
                sampling: Default::default(),
                seed: 0,
                stop: vec![],
                logprobs: None,
                prompt_logprobs: None,
            },
            events,
        }
    }

    #[test]
    fn higher_tiers_first_with_a_share_for_the_rest() {
        let mut rooms = Rooms::new(1);
        for s in 0..6 {
            rooms.waiting[2].push_back(job(s, Tier::Leech));
        }
        for s in 6..14 {
            rooms.waiting[0].push_back(job(s, Tier::Oracle));
        }
        rooms.waiting[1].push_back(job(14, Tier::Scout));
        assert_eq!(rooms.ahead_of(14, Tier::Scout), Some(8), "behind every Oracle request");
        assert_eq!(rooms.ahead_of(0, Tier::Leech), Some(9));
        let order: Vec<u64> = std::iter::from_fn(|| rooms.pick().map(|j| j.seq)).collect();
        // Every fourth pick takes the oldest lower-tier request (Leech 0 is older than Scout 14).
        assert_eq!(order[..8], [6, 7, 8, 0, 9, 10, 11, 1]);
        assert_eq!(order.len(), 15);
        assert!(order.iter().position(|&s| s == 14).unwrap() < order.iter().position(|&s| s == 5).unwrap());
    }
}
