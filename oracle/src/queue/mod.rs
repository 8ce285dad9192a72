//! The request queue in front of the engine.
//!
//! One worker thread owns the model's session and runs one generation at a time; requests
//! wait in a bounded queue. A full queue refuses new work at once (the API answers 429 with
//! `Retry-After`), so load never turns into unbounded memory or latency. A request whose
//! client left while it waited is dropped without running.
//!
//! Every accepted request holds a ticket: a random id, so that nobody can enumerate other
//! people's requests, and a place in the order. The worker takes requests in order, so a
//! request's place in line is its order number minus the number of requests finished: a
//! [`Submission`] turns that into live [`QueueStatus`] updates (the web app's "position 3,
//! about 12 s"), and `GET /api/queue/{ticket}` answers the same for whoever holds the id.
//!
//! Each request's events go through a bounded channel. A client that stops reading fills it
//! (the socket's buffers first, then the channel); once it has stayed full for
//! [`STALL_GRACE`] the job is cancelled and its place freed, so a client that never reads
//! cannot hold the engine or grow the Oracle's memory.
//!
//! The worker's KV cache keeps the previous request's tokens, so that a conversation's next
//! turn reuses its prefix. That reuse is kept within one client ([`ClientKey`]): another
//! client's request starts from an empty cache, so neither `cached_tokens` nor timing tells
//! anyone what the previous request held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::engine::generate::{generate, Event, Finish, GenerateError, GenerateParams, Session, Speculation};
use crate::engine::Engine;
use crate::spec::adaptive::Pace;
use crate::spec::draft::DraftSource;
use crate::spec::metrics::SpecMetrics;

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
}

/// Events a request may have waiting for its client before the job counts as stalled.
pub const EVENT_BUFFER: usize = 64;
/// How long a request's event channel may stay full before the job is cancelled.
pub const STALL_GRACE: Duration = Duration::from_millis(250);
/// How long a finished ticket still answers `GET /api/queue/{ticket}`.
const DONE_TICKET_TTL: Duration = Duration::from_secs(120);

/// Who sent a request, as far as reusing cached work goes: an opaque key (a hash of the
/// client's address or identity). Requests of one client may share a cached prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClientKey(pub u64);

struct Job {
    /// Place in the order of submission.
    seq: u64,
    client: ClientKey,
    prompt: Vec<u32>,
    params: GenerateParams,
    events: mpsc::Sender<JobEvent>,
}

/// The queue is full; try again after about `retry_after_secs`.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull {
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
    /// Exponential moving average of a request's run time, in milliseconds.
    pub avg_job_ms: AtomicU64,
    /// When the running request started (ms since the queue started), for wait estimates.
    pub running_since_ms: AtomicU64,
    pub spec: SpecMetrics,
}

/// Speculative decoding settings for the worker.
#[derive(Clone)]
pub struct SpecConfig {
    pub source: Arc<dyn DraftSource>,
    pub k_max: usize,
    /// Time drafting and verification, and draft only as far as it pays: for a source that
    /// drafts on the Oracle's own cores (`--draft-model`).
    pub paced: bool,
}

#[derive(Clone)]
pub struct InferenceQueue {
    tx: mpsc::Sender<Job>,
    pub capacity: usize,
    pub stats: Arc<QueueStats>,
    /// The next order number to hand out; held while enqueueing so numbers keep the
    /// channel's order.
    next_seq: Arc<Mutex<u64>>,
    /// How many requests are done (run, failed or skipped): the order number being served.
    finished: watch::Receiver<u64>,
    /// Ticket ids of live and recently finished requests, and their order numbers.
    tickets: Arc<Mutex<HashMap<String, TicketEntry>>>,
    epoch: Instant,
}

struct TicketEntry {
    seq: u64,
    issued: Instant,
}

/// Where a request stands in the queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStatus {
    /// The request's ticket id (random; `GET /api/queue/{ticket}`).
    pub ticket: String,
    /// Requests ahead of this one, the running one included; 0 once it runs.
    pub ahead: u64,
    pub state: TicketState,
    /// A rough wait until it starts: the requests ahead times the average run time.
    pub est_wait_ms: u64,
    /// The priority tier it waits in. Every request is a Leech until tiers are proven by keys.
    pub tier: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    Waiting,
    Running,
    Done,
}

/// An accepted request: its ticket, its events and live queue updates while it waits.
pub struct Submission {
    pub ticket: String,
    seq: u64,
    rx: mpsc::Receiver<JobEvent>,
    finished: watch::Receiver<u64>,
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
            changed = self.finished.changed() => {
                // The worker is gone: nothing more will change while waiting.
                self.waiting &= changed.is_ok();
                Some(Update::Queued(self.status()))
            }
            _ = tick => Some(Update::Queued(self.status())),
        }
    }

    /// Where this request stands now.
    pub fn status(&self) -> QueueStatus {
        self.queue.status_of(self.seq, &self.ticket)
    }

    /// The next job event, skipping queue updates (for answers that are not streamed).
    pub async fn recv(&mut self) -> Option<JobEvent> {
        self.waiting = false;
        self.rx.recv().await
    }
}

impl InferenceQueue {
    /// Starts the worker thread. `capacity` bounds waiting requests; `spec` turns on
    /// speculative decoding.
    pub fn start(engine: Arc<Engine>, capacity: usize, spec: Option<SpecConfig>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(capacity.max(1));
        let stats = Arc::new(QueueStats::default());
        let (finished_tx, finished) = watch::channel(0u64);
        let epoch = Instant::now();
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("shard-engine".into())
            .spawn(move || worker(engine, rx, worker_stats, spec, finished_tx, epoch))
            .expect("spawn engine worker");
        Self {
            tx,
            capacity,
            stats,
            next_seq: Arc::new(Mutex::new(0)),
            finished,
            tickets: Arc::new(Mutex::new(HashMap::new())),
            epoch,
        }
    }

    /// Enqueues a generation for `client`; its events and queue updates come through the
    /// [`Submission`].
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams, client: ClientKey) -> Result<Submission, QueueFull> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let mut next = self.next_seq.lock().unwrap_or_else(|e| e.into_inner());
        let seq = *next;
        let ahead = self.stats.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Job { seq, client, prompt, params, events }) {
            Ok(()) => {
                *next += 1;
                drop(next);
                let ticket = format!("{:016x}{:016x}", rand08::random::<u64>(), rand08::random::<u64>());
                let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
                let finished = *self.finished.borrow();
                // Forget tickets that finished long ago (a live one is never dropped).
                tickets.retain(|_, t| t.seq >= finished || t.issued.elapsed() < DONE_TICKET_TTL);
                tickets.insert(ticket.clone(), TicketEntry { seq, issued: Instant::now() });
                drop(tickets);
                Ok(Submission { ticket, seq, rx, finished: self.finished.clone(), queue: self.clone(), waiting: true })
            }
            Err(_) => {
                self.stats.depth.fetch_sub(1, Ordering::SeqCst);
                let avg_ms = self.stats.avg_job_ms.load(Ordering::Relaxed).max(500);
                let secs = (avg_ms * (ahead as u64 + 1)).div_ceil(1000);
                Err(QueueFull { retry_after_secs: secs.clamp(1, 600) })
            }
        }
    }

    /// Where the request holding ticket id `ticket` stands, if it is live or recent.
    pub fn status(&self, ticket: &str) -> Option<QueueStatus> {
        let seq = self.tickets.lock().unwrap_or_else(|e| e.into_inner()).get(ticket)?.seq;
        Some(self.status_of(seq, ticket))
    }

    /// What a request submitted now would face.
    pub fn status_of_next(&self) -> QueueStatus {
        let seq = *self.next_seq.lock().unwrap_or_else(|e| e.into_inner());
        self.status_of(seq, "")
    }

    /// Where order number `seq` stands: waiting (with the requests ahead), running or done.
    fn status_of(&self, seq: u64, ticket: &str) -> QueueStatus {
        let finished = *self.finished.borrow();
        let (ahead, state) = match seq.checked_sub(finished) {
            None => (0, TicketState::Done),
            Some(0) => (0, TicketState::Running),
            Some(n) => (n, TicketState::Waiting),
        };
        let est_wait_ms = if ahead == 0 {
            0
        } else {
            // The running request's remaining time, then a full average for each one after it.
            // Before any request has finished, guess one of 128 single decoding steps.
            let guess = self.stats.spec.single_step_micros.load(Ordering::Relaxed) * 128 / 1000;
            let avg = match self.stats.avg_job_ms.load(Ordering::Relaxed) {
                0 => guess.max(1),
                ms => ms,
            };
            let now = self.epoch.elapsed().as_millis() as u64;
            let ran = now.saturating_sub(self.stats.running_since_ms.load(Ordering::Relaxed));
            avg.saturating_sub(ran).max(avg / 10) + (ahead - 1) * avg
        };
        QueueStatus { ticket: ticket.to_string(), ahead, state, est_wait_ms, tier: "leech" }
    }

    /// Requests accepted so far, and how many of them are done.
    pub fn tickets(&self) -> (u64, u64) {
        (*self.next_seq.lock().unwrap_or_else(|e| e.into_inner()), *self.finished.borrow())
    }
}

/// Sends an event to a request's client, waiting up to [`STALL_GRACE`] while its channel is
/// full; false when the client is gone or has stopped reading.
fn send_event(events: &mpsc::Sender<JobEvent>, mut event: JobEvent, stats: &QueueStats) -> bool {
    let deadline = Instant::now() + STALL_GRACE;
    loop {
        match events.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    stats.stalled.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("cancelling a request whose client stopped reading");
                    return false;
                }
                event = back;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn worker(
    engine: Arc<Engine>,
    mut rx: mpsc::Receiver<Job>,
    stats: Arc<QueueStats>,
    spec: Option<SpecConfig>,
    finished: watch::Sender<u64>,
    epoch: Instant,
) {
    let mut session = Session::new(&engine);
    // Whose tokens the session's cache holds.
    let mut owner = ClientKey::default();
    let mut sequence = 0u64;
    let pace = Pace::new();
    while let Some(job) = rx.blocking_recv() {
        sequence += 1;
        // Requests are taken in order: this one is served, every earlier one is done.
        finished.send_replace(job.seq);
        if job.events.is_closed() {
            stats.depth.fetch_sub(1, Ordering::SeqCst);
            finished.send_replace(job.seq + 1);
            continue;
        }
        if job.client != owner {
            // Another client's prefix is not reused (nor reported as cached).
            session.truncate(0);
            owner = job.client;
        }
        let started = Instant::now();
        stats.running_since_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let events = job.events.clone();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let speculation = spec.as_ref().map(|s| Speculation {
                source: s.source.as_ref(),
                k_max: s.k_max,
                sequence,
                pace: s.paced.then_some(&pace),
            });
            generate(&engine, &mut session, &job.prompt, &job.params, speculation, &mut |e| {
                send_event(&events, JobEvent::Event(e), &stats)
            })
        }));
        if let Some(s) = &spec {
            s.source.finished(sequence);
        }
        let result = match run {
            Ok(r) => r.map_err(JobError::from),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                tracing::error!(%msg, "generation panicked; resetting the session");
                session = Session::new(&engine);
                Err(JobError::Internal(msg))
            }
        };
        if let Ok(f) = &result {
            stats.tokens_generated.fetch_add(f.completion_tokens as u64, Ordering::Relaxed);
            stats.spec.record(&f.spec, f.completion_tokens, f.decode_time.as_micros() as u64);
            if let Some(c) = pace.costs() {
                stats.spec.set_pace(&c);
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        let old = stats.avg_job_ms.load(Ordering::Relaxed);
        stats.avg_job_ms.store(if old == 0 { ms } else { (old * 7 + ms) / 8 }, Ordering::Relaxed);
        stats.completed.fetch_add(1, Ordering::Relaxed);
        stats.depth.fetch_sub(1, Ordering::SeqCst);
        let _ = send_event(&job.events, JobEvent::Finished(result), &stats);
        finished.send_replace(job.seq + 1);
    }
}
