//! The request queue in front of the engine.
//!
//! One worker thread owns the model's session and runs one generation at a time; requests
//! wait in a bounded queue. A full queue refuses new work at once (the API answers 429 with
//! `Retry-After`), so load never turns into unbounded memory or latency. A request whose
//! client left while it waited is dropped without running.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::engine::generate::{generate, Event, Finish, GenerateError, GenerateParams, Session, Speculation};
use crate::engine::Engine;
use crate::spec::draft::DraftSource;
use crate::spec::metrics::SpecMetrics;

/// What a queued request hears back.
#[derive(Debug)]
pub enum JobEvent {
    /// How many requests are ahead (sent while waiting, when it changes).
    Queued {
        position: usize,
    },
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

struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    events: mpsc::UnboundedSender<JobEvent>,
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
    /// Exponential moving average of a request's run time, in milliseconds.
    pub avg_job_ms: AtomicU64,
    pub spec: SpecMetrics,
}

/// Speculative decoding settings for the worker.
#[derive(Clone)]
pub struct SpecConfig {
    pub source: Arc<dyn DraftSource>,
    pub k_max: usize,
}

#[derive(Clone)]
pub struct InferenceQueue {
    tx: mpsc::Sender<Job>,
    pub capacity: usize,
    pub stats: Arc<QueueStats>,
}

impl InferenceQueue {
    /// Starts the worker thread. `capacity` bounds waiting requests; `spec` turns on
    /// speculative decoding.
    pub fn start(engine: Arc<Engine>, capacity: usize, spec: Option<SpecConfig>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(capacity.max(1));
        let stats = Arc::new(QueueStats::default());
        let worker_stats = stats.clone();
        std::thread::Builder::new()
            .name("shard-engine".into())
            .spawn(move || worker(engine, rx, worker_stats, spec))
            .expect("spawn engine worker");
        Self { tx, capacity, stats }
    }

    /// Enqueues a generation; events arrive on the returned receiver.
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams) -> Result<mpsc::UnboundedReceiver<JobEvent>, QueueFull> {
        let (events, rx) = mpsc::unbounded_channel();
        let ahead = self.stats.depth.fetch_add(1, Ordering::SeqCst);
        let _ = events.send(JobEvent::Queued { position: ahead });
        match self.tx.try_send(Job { prompt, params, events }) {
            Ok(()) => Ok(rx),
            Err(_) => {
                self.stats.depth.fetch_sub(1, Ordering::SeqCst);
                let avg_ms = self.stats.avg_job_ms.load(Ordering::Relaxed).max(500);
                let secs = (avg_ms * (ahead as u64 + 1)).div_ceil(1000);
                Err(QueueFull { retry_after_secs: secs.clamp(1, 600) })
            }
        }
    }

    pub fn depth(&self) -> usize {
        self.stats.depth.load(Ordering::SeqCst)
    }
}

fn worker(engine: Arc<Engine>, mut rx: mpsc::Receiver<Job>, stats: Arc<QueueStats>, spec: Option<SpecConfig>) {
    let mut session = Session::new(&engine);
    let mut sequence = 0u64;
    while let Some(job) = rx.blocking_recv() {
        sequence += 1;
        if job.events.is_closed() {
            stats.depth.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let started = Instant::now();
        let events = job.events.clone();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let speculation = spec.as_ref().map(|s| Speculation { source: s.source.as_ref(), k_max: s.k_max, sequence });
            generate(&engine, &mut session, &job.prompt, &job.params, speculation, &mut |e| {
                events.send(JobEvent::Event(e)).is_ok()
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
        }
        let ms = started.elapsed().as_millis() as u64;
        let old = stats.avg_job_ms.load(Ordering::Relaxed);
        stats.avg_job_ms.store(if old == 0 { ms } else { (old * 7 + ms) / 8 }, Ordering::Relaxed);
        stats.completed.fetch_add(1, Ordering::Relaxed);
        stats.depth.fetch_sub(1, Ordering::SeqCst);
        let _ = job.events.send(JobEvent::Finished(result));
    }
}
