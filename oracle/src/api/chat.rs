//! `POST /v1/chat/completions`: the conversation is rendered with the model's chat template,
//! then generated like a completion; streamed as `chat.completion.chunk` deltas.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shard_shared::chat::ChatMessage;

use super::error::ApiError;
use super::json::ApiJson;
use super::limits::{Client, Limits, MAX_MESSAGES};
use super::openapi::{ChatResponse, ErrorBody};
use super::types::{choices_per_prompt, max_tokens, new_id, unix_now, SamplingFields, StreamOptions, Usage};
use super::{collect_all, job_error, logprob_count, queue_comment, with_ticket, AppState};
use crate::engine::generate::{Event, GenerateParams, TokenLogprob};
use crate::queue::{JobEvent, Update};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<MessageIn>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    pub n: Option<i64>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    pub name: Option<String>,
}

/// Message content: a string, or a list of typed parts of which only text is supported.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// Checks the messages and turns them into what the template sees.
pub fn messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "messages must not be empty"));
    }
    if req.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid_param(
            "messages",
            format!("{} messages are too many; at most {MAX_MESSAGES} are accepted", req.messages.len()),
        ));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(ApiError::invalid_param(&format!("messages[{i}].role"), format!("unknown role {:?}", m.role)));
            }
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(s)) => s.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    &format!("messages[{i}].content"),
                                    format!("content parts of type {kind:?} are not supported; only text is"),
                                ))
                            }
                        }
                    }
                    s
                }
            };
            let role = if m.role == "developer" { "system".to_string() } else { m.role.clone() };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// One token of the chat logprobs array.
fn logprob_entry(state: &AppState, lp: &TokenLogprob) -> Value {
    json!({
        "token": state.token_text(lp.token),
        "logprob": lp.logprob,
        "bytes": state.token_bytes(lp.token),
        "top_logprobs": lp.top.iter().map(|&(t, v)| json!({"token": state.token_text(t), "logprob": v, "bytes": state.token_bytes(t)})).collect::<Vec<_>>(),
    })
}

/// Everything in a chat request that can be checked without the model: its messages, `n` and
/// generation parameters. (Also what the HTTP fuzz target runs.)
pub fn validate(req: &ChatRequest, n_vocab: usize, n_ctx: usize) -> Result<(Vec<ChatMessage>, usize, GenerateParams), ApiError> {
    let msgs = messages(req)?;
    let n = choices_per_prompt(req.n)?;
    let mut params = req.sampling.to_params(n_vocab)?;
    params.max_tokens = max_tokens(req.max_completion_tokens.or(req.max_tokens), n_ctx, "max_tokens")?;
    let top = logprob_count(req.top_logprobs, "top_logprobs")?;
    if top.is_some() && !req.logprobs {
        return Err(ApiError::invalid_param("top_logprobs", "top_logprobs requires logprobs to be true"));
    }
    params.logprobs = req.logprobs.then_some(top.unwrap_or(0));
    if req.stream && n != 1 {
        return Err(ApiError::invalid_param("n", "streaming supports n = 1 only"));
    }
    Ok((msgs, n, params))
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The chat completion, or with `stream` server-sent events of `chat.completion.chunk` chunks ending in `data: [DONE]`", content((ChatResponse = "application/json"), (String = "text/event-stream"))),
        (status = 404, description = "Another model was named", body = ErrorBody),
        (status = 400, description = "A malformed body or a parameter out of bounds", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorBody),
        (status = 429, description = "The tier's room is full, or this client has too many requests; see Retry-After", body = ErrorBody),
        (status = 503, description = "Request preparation could not start in time", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn handler(
    State(state): State<Arc<AppState>>,
    client: Client,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let n_ctx = state.engine.n_ctx;
    let (msgs, n, params) = validate(&req, state.engine.model.config.n_vocab, n_ctx)?;
    let slot = state.limits.admit(&client)?;
    let st = state.clone();
    let prompt = state.limits.blocking(move || st.chat_prompt(&msgs)).await??;
    let (tokens, entries) = Limits::cost(n, prompt.len(), params.max_tokens, n_ctx, params.logprobs, false);
    state.limits.check_budget(n, tokens, entries)?;
    let id = new_id("chatcmpl");
    let created = unix_now();
    let model = state.engine.model_id.clone();

    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let mut rx = state.submit(prompt, params, &client)?;
        let ticket = rx.ticket.clone();
        let chunk = move |delta: Value, logprobs: Value, finish: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": crate::FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            })
        };
        let body = async_stream::stream! {
            // The client's slot is held for as long as the stream runs.
            let _slot = slot;
            yield Ok::<_, Infallible>(SseEvent::default().data(chunk(json!({"role": "assistant", "content": ""}), Value::Null, Value::Null).to_string()));
            yield Ok(queue_comment(&rx.status()));
            while let Some(update) = rx.next_update().await {
                let ev = match update {
                    Update::Queued(status) => { yield Ok(queue_comment(&status)); continue; }
                    Update::Job(ev) => ev,
                };
                match ev {
                    JobEvent::Event(Event::Prompt(_)) => {}
                    JobEvent::Event(Event::Token { text, logprob, .. }) => {
                        let lp = match &logprob { Some(l) => json!({"content": [logprob_entry(&state, l)]}), None => Value::Null };
                        yield Ok(SseEvent::default().data(chunk(json!({"content": text}), lp, Value::Null).to_string()));
                    }
                    JobEvent::Finished(Ok(f)) => {
                        if !f.tail.is_empty() {
                            yield Ok(SseEvent::default().data(chunk(json!({"content": f.tail}), Value::Null, Value::Null).to_string()));
                        }
                        yield Ok(SseEvent::default().data(chunk(json!({}), Value::Null, json!(f.reason.as_str())).to_string()));
                        if include_usage {
                            let mut usage = Usage::default();
                            usage.add(&f);
                            let mut last = chunk(json!({}), Value::Null, Value::Null);
                            last["choices"] = json!([]);
                            last["usage"] = json!(usage);
                            yield Ok(SseEvent::default().data(last.to_string()));
                        }
                        break;
                    }
                    JobEvent::Finished(Err(e)) => {
                        yield Ok(SseEvent::default().data(job_error(e).body().to_string()));
                        break;
                    }
                }
            }
            yield Ok(SseEvent::default().data("[DONE]"));
        };
        return Ok(with_ticket(Sse::new(body).keep_alive(KeepAlive::default()).into_response(), &ticket));
    }

    let jobs = (0..n)
        .map(|k| {
            let mut p = params.clone();
            p.seed = params.seed.wrapping_add(k as u64);
            (prompt.clone(), p)
        })
        .collect();
    let collected = collect_all(&state, jobs, &client).await?;
    let mut choices = vec![];
    let mut usage = Usage::default();
    for (k, c) in collected.into_iter().enumerate() {
        let finish = c.finish.as_ref().expect("collected");
        usage.add(finish);
        let logprobs = if req.logprobs {
            json!({"content": c.tokens.iter().filter_map(|(_, lp)| lp.as_ref()).map(|lp| logprob_entry(&state, lp)).collect::<Vec<_>>()})
        } else {
            Value::Null
        };
        choices.push(json!({
            "index": k,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": logprobs,
            "finish_reason": finish.reason.as_str(),
        }));
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": crate::FINGERPRINT,
        "choices": choices,
        "usage": usage,
    }))
    .into_response())
}
