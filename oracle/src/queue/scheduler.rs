//! The engine thread's step loop: continuous batching over `--parallel` slots.
//!
//! Each step packs one forward pass: one token for every decoding sequence, 1 + k for every
//! sequence with a draft at hand (in-process or from a Scout; never waited for), and chunks of
//! new prompts within the step's token budget. New requests take free slots between steps,
//! finished and cancelled ones leave at once. A panic in one sequence's own work (planning,
//! sampling, emitting) fails that sequence alone; a panic inside the shared pass fails the
//! sequences in it, and their caches are reset.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{ClientKey, Job, JobError, JobEvent, QueueStats, Shared, SpecConfig, Tier, STALL_GRACE};
use crate::engine::generate::{Event, Finish, Session, Speculation};
use crate::engine::kv_cache::{KvCache, KvPool, PoolFull};
use crate::engine::sequence::{PassShare, PassTiming, Sequence};
use crate::engine::Engine;
use crate::spec::adaptive::{Pace, PassCost};
use crate::trust::Trust;

pub(super) struct Scheduler {
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    pub stats: Arc<QueueStats>,
    pub spec: Option<SpecConfig>,
    pub trust: Option<Arc<Trust>>,
    pub changed: watch::Sender<u64>,
    pub slots: usize,
    pub step_tokens: usize,
    /// The pages every slot's KV cache takes from.
    pub kv_pool: Arc<KvPool>,
}

/// A slot's cache between requests: whose tokens it holds, and when it was last used.
struct Slot {
    session: Session,
    owner: ClientKey,
    last_used: u64,
    busy: bool,
}

/// Events on their way to a client that may be slow to read them.
struct Outbox {
    events: mpsc::Sender<JobEvent>,
    queue: VecDeque<JobEvent>,
    /// Since when the client's channel has been full.
    full_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Flowing,
    /// The client went away.
    Gone,
    /// The client's channel stayed full for [`STALL_GRACE`]: it stopped reading.
    Stalled,
}

impl Outbox {
    fn new(events: mpsc::Sender<JobEvent>) -> Self {
        Self { events, queue: VecDeque::new(), full_since: None }
    }

    /// Sends what the channel takes; never blocks.
    fn flush(&mut self) -> Delivery {
        while let Some(ev) = self.queue.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => self.full_since = None,
                Err(mpsc::error::TrySendError::Closed(_)) => return Delivery::Gone,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    self.queue.push_front(back);
                    let since = *self.full_since.get_or_insert_with(Instant::now);
                    return if since.elapsed() >= STALL_GRACE { Delivery::Stalled } else { Delivery::Flowing };
                }
            }
        }
        if self.events.is_closed() {
            Delivery::Gone
        } else {
            Delivery::Flowing
        }
    }
}

/// A request in a slot.
struct Active<'s> {
    job: Job,
    seq: Sequence<'s>,
    slot: usize,
    sequence: u64,
    outbox: Outbox,
    started: Instant,
    last_token: Option<Instant>,
}

impl Scheduler {
    pub(super) fn run(self) {
        let spec = self.spec.clone();
        let pace = Pace::new();
        let mut slots: Vec<Slot> = (0..self.slots)
            .map(|_| Slot {
                session: Session::in_pool(&self.engine, &self.kv_pool),
                owner: ClientKey::default(),
                last_used: 0,
                busy: false,
            })
            .collect();
        let mut active: Vec<Active<'_>> = Vec::new();
        // Finished requests whose last events still wait for their client.
        let mut draining: Vec<Outbox> = Vec::new();
        let mut sequence = 0u64;
        let mut clock = 0u64;
        // What passes cost against their tokens, for draft lengths; timed before the first
        // request where anyone drafts.
        let mut pass_cost = match &spec {
            Some(_) => PassCost::from_timings(self.engine.pass_timings()),
            None => PassCost::default(),
        };
        loop {
            draining.retain_mut(|o| o.flush() == Delivery::Flowing && !o.queue.is_empty());
            // Fill free slots.
            while active.len() < self.slots {
                let Some(job) = self.next_job(active.is_empty() && draining.is_empty()) else { break };
                if job.events.is_closed() {
                    self.done(&job);
                    continue;
                }
                sequence += 1;
                clock += 1;
                let slot = choose_slot(&mut slots, &job, clock);
                let session = std::mem::replace(&mut slots[slot].session, Session::new(&self.engine));
                let speculation = spec.as_ref().filter(|s| !s.reads_text || job.placement.scouts_may_read).map(|s| Speculation {
                    source: s.source.as_ref(),
                    k_max: s.k_max,
                    sequence,
                    pace: s.paced.then_some(&pace),
                });
                let outbox = Outbox::new(job.events.clone());
                match Sequence::new(&self.engine, session, job.prompt.clone(), job.params.clone(), speculation) {
                    Ok(seq) => {
                        active.push(Active { job, seq, slot, sequence, outbox, started: Instant::now(), last_token: None })
                    }
                    Err((e, session)) => {
                        slots[slot].session = session;
                        slots[slot].busy = false;
                        let mut outbox = outbox;
                        outbox.queue.push_back(JobEvent::Finished(Err(e.into())));
                        draining.push(outbox);
                        self.done(&job);
                    }
                }
            }
            if active.is_empty() {
                if !draining.is_empty() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                continue;
            }
            self.step(&mut active, &mut slots, &mut draining, &mut pass_cost, &spec, &pace);
        }
    }

    /// The next request to start; waits for one when `block` (nothing else to do).
    fn next_job(&self, block: bool) -> Option<Job> {
        let mut rooms = self.shared.rooms();
        loop {
            if let Some(job) = rooms.pick() {
                rooms.running.push((job.seq, Instant::now()));
                drop(rooms);
                self.changed.send_modify(|v| *v += 1);
                return Some(job);
            }
            if !block {
                return None;
            }
            rooms = self.shared.wake.wait(rooms).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Marks a request done and tells the waiting ones to recount.
    fn done(&self, job: &Job) {
        self.shared.rooms().running.retain(|&(s, _)| s != job.seq);
        if let Some(t) = self.shared.tickets().get_mut(&job.ticket) {
            t.done = true;
        }
        self.stats.depth.fetch_sub(1, Ordering::SeqCst);
        self.changed.send_modify(|v| *v += 1);
    }

    /// One forward pass over every active sequence that has work within the budget.
    #[allow(clippy::too_many_arguments)]
    fn step<'s>(
        &self,
        active: &mut Vec<Active<'s>>,
        slots: &mut [Slot],
        draining: &mut Vec<Outbox>,
        pass_cost: &mut PassCost,
        spec: &Option<SpecConfig>,
        pace: &Pace,
    ) {
        let engine = &*self.engine;
        // Requests whose client left free their slot now.
        let mut i = 0;
        while i < active.len() {
            if active[i].outbox.events.is_closed() {
                let mut a = active.swap_remove(i);
                let f = a.seq.cancel();
                self.retire(a, Ending::Finished(f), slots, draining, spec, pace);
            } else {
                i += 1;
            }
        }
        // Decoding sequences first, then prompts in order of arrival, within the budget.
        active.sort_by_key(|a| (a.seq.in_prompt(), a.job.seq));
        let sequences = active.len();
        let mut budget = self.step_tokens;
        let mut in_pass = vec![false; active.len()];
        let mut failed: Vec<(usize, String)> = vec![];
        // Requests still waiting for the KV pages of their longest possible length (taken
        // before their first pass, so that none runs out part-way).
        let mut short_of_pages: Vec<(usize, PoolFull)> = vec![];
        for (i, a) in active.iter_mut().enumerate() {
            if a.seq.in_prompt() && budget == 0 {
                continue;
            }
            // (Once held, the reservation stands, and asking again takes nothing.)
            let positions = a.seq.most_positions(engine);
            if let Err(full) = reserve_pages(a.seq.segment().cache, positions, slots) {
                short_of_pages.push((i, full));
                continue;
            }
            let share = PassShare { sequences, prompt_budget: budget, pass_cost: pass_cost.costs_for(sequences) };
            match catch_unwind(AssertUnwindSafe(|| a.seq.plan(engine, share))) {
                Ok(()) => {
                    in_pass[i] = true;
                    budget = budget.saturating_sub(a.seq.segment().tokens.len());
                }
                Err(panic) => failed.push((i, panic_message(panic))),
            }
        }
        // Nothing can go on, and nothing will give pages back (waiting requests can hold their
        // own cached prefixes): the newest request gives way.
        if !in_pass.contains(&true) && failed.is_empty() {
            if let Some(&(i, full)) = short_of_pages.iter().max_by_key(|&&(i, _)| active[i].job.seq) {
                tracing::warn!(pages = full.pages, "the KV cache is full and no request can go on; the newest fails");
                let mut a = active.swap_remove(i);
                let _ = a.seq.cancel();
                self.retire(a, Ending::CacheFull(full), slots, draining, spec, pace);
                return;
            }
        }
        let prompt_in_pass = active.iter().zip(&in_pass).any(|(a, &p)| p && a.seq.in_prompt());
        let started = Instant::now();
        let mut segments: Vec<_> = active.iter_mut().zip(&in_pass).filter(|(_, &p)| p).map(|(a, _)| a.seq.segment()).collect();
        let tokens: usize = segments.iter().map(|s| s.tokens.len()).sum();
        let n_in_pass = segments.len();
        let pass = catch_unwind(AssertUnwindSafe(|| engine.model.forward_batch(engine.kernel, &mut segments)));
        drop(segments);
        engine.hold_pass(started, tokens);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.stats.steps.record_step(n_in_pass, tokens, (ms * 1e3) as u64);
        let timing = PassTiming { ms, sequences: n_in_pass };
        let mut ended: Vec<(usize, Ending)> = failed.into_iter().map(|(i, m)| (i, Ending::Failed(m))).collect();
        match pass {
            Ok(rows) => {
                if !prompt_in_pass {
                    pass_cost.record(tokens, ms);
                }
                let mut rows = rows.into_iter();
                for (i, a) in active.iter_mut().enumerate() {
                    if !in_pass[i] {
                        continue;
                    }
                    let logits = rows.next().expect("one result per segment");
                    let steps = &self.stats.steps;
                    let (submitted, last_token, queue) = (a.job.submitted, &mut a.last_token, &mut a.outbox.queue);
                    let mut emit = |e: Event| {
                        if let Event::Token { .. } = e {
                            let now = Instant::now();
                            match last_token.replace(now) {
                                None => steps.ttft.record((now - submitted).as_micros() as u64),
                                Some(t) => steps.itl.record((now - t).as_micros() as u64),
                            }
                        }
                        queue.push_back(JobEvent::Event(e));
                        true
                    };
                    match catch_unwind(AssertUnwindSafe(|| a.seq.absorb(engine, logits, timing, &mut emit))) {
                        Ok(None) => {}
                        Ok(Some(f)) => ended.push((i, Ending::Finished(f))),
                        Err(panic) => ended.push((i, Ending::Failed(panic_message(panic)))),
                    }
                }
            }
            Err(panic) => {
                let msg = panic_message(panic);
                tracing::error!(%msg, sequences = n_in_pass, "a batched forward pass panicked; its sequences fail");
                ended.extend(in_pass.iter().enumerate().filter(|(_, &p)| p).map(|(i, _)| (i, Ending::Failed(msg.clone()))));
            }
        }
        // Deliver what the pass produced; a client that went away or stopped reading ends
        // its request.
        for (i, a) in active.iter_mut().enumerate() {
            if ended.iter().any(|&(j, _)| j == i) {
                continue;
            }
            match a.outbox.flush() {
                Delivery::Flowing => {}
                Delivery::Gone => ended.push((i, Ending::Finished(a.seq.cancel()))),
                Delivery::Stalled => ended.push((i, Ending::Stalled(a.seq.cancel()))),
            }
        }
        ended.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, ending) in ended {
            let a = active.swap_remove(i);
            self.retire(a, ending, slots, draining, spec, pace);
        }
    }

    /// Takes a request out of its slot: books its figures, sends its last event, frees the slot.
    fn retire(
        &self,
        a: Active<'_>,
        ending: Ending,
        slots: &mut [Slot],
        draining: &mut Vec<Outbox>,
        spec: &Option<SpecConfig>,
        pace: &Pace,
    ) {
        let stats = &self.stats;
        let Active { job, seq, slot, sequence, mut outbox, started, .. } = a;
        slots[slot].busy = false;
        slots[slot].session = match &ending {
            Ending::Failed(_) => Session::in_pool(&self.engine, &self.kv_pool),
            _ => seq.into_session(),
        };
        // An idle slot keeps only the pages of its cached prefix.
        slots[slot].session.cache.release();
        if let Some(s) = spec {
            s.source.finished(sequence);
        }
        let (result, stalled) = match ending {
            Ending::CacheFull(full) => (Err(JobError::CacheFull(full)), false),
            Ending::Finished(f) => (Ok(f), false),
            Ending::Stalled(f) => (Ok(f), true),
            Ending::Failed(msg) => {
                tracing::error!(%msg, "generation panicked; its slot's cache was reset");
                (Err(JobError::Internal(msg)), false)
            }
        };
        if let Ok(f) = &result {
            stats.tokens_generated.fetch_add(f.completion_tokens as u64, Ordering::Relaxed);
            stats.spec.record(&f.spec, f.completion_tokens, f.decode_time.as_micros() as u64);
            if let Some(c) = pace.costs() {
                stats.spec.set_pace(&c);
            }
            // A Scout-tier request is paid for with the Scout's credits.
            if let (Tier::Scout, Some(peer), Some(trust)) = (job.placement.tier, &job.placement.payer, &self.trust) {
                if let Err(e) = trust.spend(peer, f.completion_tokens) {
                    tracing::error!(%peer, "charging a Scout-tier request failed: {e}");
                }
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        let old = stats.avg_job_ms.load(Ordering::Relaxed);
        stats.avg_job_ms.store(if old == 0 { ms } else { (old * 7 + ms) / 8 }, Ordering::Relaxed);
        stats.completed.fetch_add(1, Ordering::Relaxed);
        if stalled {
            stats.stalled.fetch_add(1, Ordering::Relaxed);
            tracing::info!("cancelled a request whose client stopped reading");
        } else {
            outbox.queue.push_back(JobEvent::Finished(result));
            if outbox.flush() == Delivery::Flowing && !outbox.queue.is_empty() {
                draining.push(outbox);
            }
        }
        self.done(&job);
    }
}

/// How a request left its slot.
enum Ending {
    Finished(Finish),
    /// Its client stopped reading.
    Stalled(Finish),
    /// A panic in its own work or in its pass.
    Failed(String),
    /// It gave way when no request could have the KV pages to go on.
    CacheFull(PoolFull),
}

/// Takes the KV pages that `positions` need; when the pool is full, empties idle slots'
/// cached prefixes (least recently used first) to make room.
fn reserve_pages(cache: &mut KvCache, positions: usize, slots: &mut [Slot]) -> Result<(), PoolFull> {
    loop {
        match cache.reserve(positions) {
            Ok(()) => return Ok(()),
            Err(full) => {
                let idle = slots.iter_mut().filter(|s| !s.busy && s.session.cache.pages() > 0).min_by_key(|s| s.last_used);
                match idle {
                    Some(slot) => slot.session.truncate(0),
                    None => return Err(full),
                }
            }
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// The slot for `job`: a free one of the same client holding the longest common prefix
/// with its prompt (as llama.cpp's server picks), else the free one least recently used,
/// emptied when it held another client's tokens.
fn choose_slot(slots: &mut [Slot], job: &Job, clock: u64) -> usize {
    let common = |s: &Slot| s.session.tokens.iter().zip(&job.prompt).take_while(|(a, b)| a == b).count();
    let free = || slots.iter().enumerate().filter(|(_, s)| !s.busy);
    let best = free()
        .filter(|(_, s)| s.owner == job.placement.client)
        .map(|(i, s)| (common(s), i))
        .filter(|&(c, _)| c > 0)
        .max()
        .map(|(_, i)| i)
        .or_else(|| free().min_by_key(|(_, s)| s.last_used).map(|(i, _)| i))
        .expect("a free slot when fewer requests than slots run");
    let slot = &mut slots[best];
    if slot.owner != job.placement.client {
        // Another client's prefix is not reused (nor reported as cached).
        slot.session.truncate(0);
        slot.owner = job.placement.client;
    }
    slot.busy = true;
    slot.last_used = clock;
    best
}
