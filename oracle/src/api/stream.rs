//! A request's choices (its prompts × `n`) as one stream of events, and the one SSE writer that
//! both `/v1/completions` and `/v1/chat/completions` stream through.
//!
//! The jobs run a slot-load at a time: as many as the engine has slots are in the queue at
//! once, so they decode together in its batches while one request never fills a waiting room
//! by itself, and each finished choice lets the next one in. Unstreamed responses gather the
//! same events ([`collect_all`]), so both kinds of response run their choices the same way.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use serde_json::Value;

use super::error::ApiError;
use super::limits::{Client, ClientSlot};
use super::types::Usage;
use super::{job_error, queue_comment, with_ticket, AppState};
use crate::engine::generate::{Event, Finish, GenerateParams, TokenLogprob};
use crate::queue::{JobEvent, QueueStatus, Submission, Update};

/// What happened to one choice.
#[derive(Debug)]
pub enum ChoiceEvent {
    /// Its job joined the queue.
    Started,
    /// Logprobs of the prompt tokens (asked for with `echo` and `logprobs`); the first has none.
    Prompt(Vec<Option<TokenLogprob>>),
    /// One generated token and the text that became safe to show.
    Token { id: u32, text: String, logprob: Option<TokenLogprob> },
    /// It is done.
    Finished(Finish),
}

/// One thing a request hears, whichever of its choices it concerns.
#[derive(Debug)]
pub enum StreamEvent {
    /// A choice still waits for a slot: its place in line and estimated wait.
    Queued(QueueStatus),
    /// Choice `.0` (its index in the response) moved on.
    Choice(usize, ChoiceEvent),
    /// The request failed; nothing follows.
    Failed(ApiError),
}

/// A request's events, and the queue ticket of its first job (`x-shard-queue-ticket`).
pub struct Choices {
    pub ticket: String,
    pub events: BoxStream<'static, StreamEvent>,
}

/// Queues `jobs` (choice `i` is `jobs[i]`) and returns their events as they come. The first
/// slot-load is queued before this returns, so a full queue is a 429 now rather than a broken
/// stream later; each later job is queued when an earlier one finishes.
pub fn run(state: Arc<AppState>, jobs: Vec<(Vec<u32>, GenerateParams)>, client: Client) -> Result<Choices, ApiError> {
    let wave = state.queue.slots().max(1);
    let mut jobs = jobs.into_iter().enumerate();
    // A refusal drops the submissions made so far, which cancels them.
    let first = jobs
        .by_ref()
        .take(wave)
        .map(|(i, (prompt, params))| Ok((i, state.submit(prompt, params, &client)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let ticket = first.first().map(|(_, s)| s.ticket.clone()).ok_or_else(|| ApiError::internal("a request with no choices"))?;
    let events = async_stream::stream! {
        let mut live = SelectAll::new();
        for (i, sub) in first {
            live.push(choice_events(i, sub));
        }
        while let Some(ev) = live.next().await {
            let (finished, failed) = (matches!(ev, StreamEvent::Choice(_, ChoiceEvent::Finished(_))), matches!(ev, StreamEvent::Failed(_)));
            yield ev;
            if failed {
                // Dropping the others' submissions cancels them.
                break;
            }
            if finished {
                if let Some((i, (prompt, params))) = jobs.next() {
                    match state.submit(prompt, params, &client) {
                        Ok(sub) => live.push(choice_events(i, sub)),
                        Err(e) => {
                            yield StreamEvent::Failed(e);
                            break;
                        }
                    }
                }
            }
        }
    };
    Ok(Choices { ticket, events: events.boxed() })
}

/// One job's updates as events of choice `choice`: started, then what the queue and engine
/// say, up to its end.
fn choice_events(choice: usize, sub: Submission) -> BoxStream<'static, StreamEvent> {
    let start = [StreamEvent::Choice(choice, ChoiceEvent::Started), StreamEvent::Queued(sub.status())];
    let updates = stream::unfold(Some(sub), move |sub| async move {
        let mut sub = sub?;
        let ev = match sub.next_update().await {
            None => {
                return Some((StreamEvent::Failed(ApiError::internal("the engine stopped before finishing the request")), None))
            }
            Some(Update::Queued(status)) => StreamEvent::Queued(status),
            Some(Update::Job(JobEvent::Event(Event::Prompt(lp)))) => StreamEvent::Choice(choice, ChoiceEvent::Prompt(lp)),
            Some(Update::Job(JobEvent::Event(Event::Token { id, text, logprob }))) => {
                StreamEvent::Choice(choice, ChoiceEvent::Token { id, text, logprob })
            }
            Some(Update::Job(JobEvent::Finished(Ok(f)))) => {
                return Some((StreamEvent::Choice(choice, ChoiceEvent::Finished(f)), None))
            }
            Some(Update::Job(JobEvent::Finished(Err(e)))) => return Some((StreamEvent::Failed(job_error(e)), None)),
        };
        Some((ev, Some(sub)))
    });
    stream::iter(start).chain(updates).boxed()
}

/// A finished choice, gathered from its events.
#[derive(Debug, Default)]
pub struct Collected {
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub tokens: Vec<(u32, Option<TokenLogprob>)>,
    pub text: String,
    pub finish: Option<Finish>,
}

/// Runs `jobs` as [`run`] does and gathers each choice, in the jobs' order.
pub async fn collect_all(
    state: &Arc<AppState>,
    jobs: Vec<(Vec<u32>, GenerateParams)>,
    client: &Client,
) -> Result<Vec<Collected>, ApiError> {
    let mut out: Vec<Collected> = (0..jobs.len()).map(|_| Collected::default()).collect();
    let mut events = run(state.clone(), jobs, client.clone())?.events;
    // Events are read as they come, so no job's bounded channel fills.
    while let Some(ev) = events.next().await {
        match ev {
            StreamEvent::Queued(_) | StreamEvent::Choice(_, ChoiceEvent::Started) => {}
            StreamEvent::Choice(i, ChoiceEvent::Prompt(lp)) => out[i].prompt_logprobs = Some(lp),
            StreamEvent::Choice(i, ChoiceEvent::Token { id, text, logprob }) => {
                out[i].text.push_str(&text);
                out[i].tokens.push((id, logprob));
            }
            StreamEvent::Choice(i, ChoiceEvent::Finished(f)) => {
                out[i].text.push_str(&f.tail);
                out[i].finish = Some(f);
            }
            StreamEvent::Failed(e) => return Err(e),
        }
    }
    if out.iter().any(|c| c.finish.is_none()) {
        return Err(ApiError::internal("the engine stopped before finishing the request"));
    }
    Ok(out)
}

/// How one endpoint writes its SSE chunks (the JSON after `data: `).
pub trait Chunks: Send + 'static {
    /// The chunks for one choice's event (none for some).
    fn choice(&mut self, choice: usize, event: &ChoiceEvent) -> Vec<Value>;
    /// The last chunk when `stream_options.include_usage` is set: no choices, and the usage.
    fn usage(&mut self, usage: &Usage) -> Value;
}

/// Streams a request's choices as server-sent events: the endpoint's chunks, queue updates as
/// comments (`: queue {...}`, which OpenAI clients skip), an error body if the request fails,
/// the usage chunk if asked for, then `data: [DONE]`. The client's slot is held until the
/// stream ends; a client that goes away drops the stream, which cancels the jobs.
pub fn sse(choices: Choices, slot: ClientSlot, include_usage: bool, mut chunks: impl Chunks) -> Response {
    let Choices { ticket, mut events } = choices;
    let body = async_stream::stream! {
        let _slot = slot;
        let mut usage = Usage::default();
        let mut failed = false;
        while let Some(ev) = events.next().await {
            match ev {
                StreamEvent::Queued(status) => yield Ok::<_, Infallible>(queue_comment(&status)),
                StreamEvent::Choice(i, ev) => {
                    if let ChoiceEvent::Finished(f) = &ev {
                        usage.add(f);
                    }
                    for c in chunks.choice(i, &ev) {
                        yield Ok(SseEvent::default().data(c.to_string()));
                    }
                }
                StreamEvent::Failed(e) => {
                    yield Ok(SseEvent::default().data(e.body().to_string()));
                    failed = true;
                    break;
                }
            }
        }
        if include_usage && !failed {
            yield Ok(SseEvent::default().data(chunks.usage(&usage).to_string()));
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    with_ticket(Sse::new(body).keep_alive(KeepAlive::default()).into_response(), &ticket)
}
