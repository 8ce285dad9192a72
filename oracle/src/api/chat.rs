//! `POST /v1/chat/completions`: the conversation is rendered with the model's chat template,
//! then generated like a completion; streamed as `chat.completion.chunk` deltas (through the
//! one SSE writer, [`stream::sse`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shard_shared::chat::ChatMessage;

use super::error::ApiError;
use super::json::ApiJson;
use super::limits::{Client, Limits, MAX_MESSAGES};
use super::openapi::{ChatResponse, ErrorBody};
use super::stream::{self, ChoiceEvent, Chunks};
use super::types::{choices_per_prompt, max_tokens, new_id, unix_now, SamplingFields, StreamOptions, Usage};
use super::{logprob_count, AppState};
use crate::engine::generate::{GenerateParams, TokenLogprob};

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

    let jobs: Vec<_> = (0..n)
        .map(|k| {
            let mut p = params.clone();
            p.seed = params.seed.wrapping_add(k as u64);
            (prompt.clone(), p)
        })
        .collect();
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let choices = stream::run(state.clone(), jobs, client)?;
        return Ok(stream::sse(choices, slot, include_usage, ChatChunks { state, id, created, model }));
    }
    let collected = stream::collect_all(&state, jobs, &client).await?;
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

/// `chat.completion.chunk`s: each choice opens with the assistant's role, then its content
/// deltas, then an empty delta with the finish reason.
struct ChatChunks {
    state: Arc<AppState>,
    id: String,
    created: u64,
    model: String,
}

impl ChatChunks {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": crate::FINGERPRINT, "choices": choices,
        })
    }

    fn delta(&self, index: usize, delta: Value, logprobs: Value, finish: Value) -> Value {
        self.chunk(json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]))
    }
}

impl Chunks for ChatChunks {
    fn choice(&mut self, index: usize, event: &ChoiceEvent) -> Vec<Value> {
        match event {
            ChoiceEvent::Started => {
                vec![self.delta(index, json!({"role": "assistant", "content": ""}), Value::Null, Value::Null)]
            }
            ChoiceEvent::Prompt(_) => vec![],
            ChoiceEvent::Token { text, logprob, .. } => {
                let lp = match logprob {
                    Some(l) => json!({"content": [logprob_entry(&self.state, l)]}),
                    None => Value::Null,
                };
                vec![self.delta(index, json!({"content": text}), lp, Value::Null)]
            }
            ChoiceEvent::Finished(f) => {
                let mut out = vec![];
                if !f.tail.is_empty() {
                    out.push(self.delta(index, json!({"content": f.tail}), Value::Null, Value::Null));
                }
                out.push(self.delta(index, json!({}), Value::Null, json!(f.reason.as_str())));
                out
            }
        }
    }

    fn usage(&mut self, usage: &Usage) -> Value {
        let mut last = self.chunk(json!([]));
        last["usage"] = json!(usage);
        last
    }
}
