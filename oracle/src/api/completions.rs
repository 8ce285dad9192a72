//! `POST /v1/completions`: OpenAI's legacy text completions, with `echo` and `logprobs`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::json::ApiJson;
use super::limits::{Client, Limits};
use super::openapi::{CompletionResponse, ErrorBody};
use super::stream::{self, ChoiceEvent, Chunks};
use super::types::{choices_per_prompt, max_tokens, new_id, unix_now, SamplingFields, StreamOptions, Usage};
use super::{logprob_count, AppState};
use crate::engine::generate::{GenerateParams, TokenLogprob};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptField>,
    pub max_tokens: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub echo: bool,
    pub logprobs: Option<i64>,
    pub n: Option<i64>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    pub user: Option<String>,
}

/// A prompt as text, token ids, or a list of either.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// One prompt ready to run: its tokens and the text `echo` returns.
struct Prompt {
    tokens: Vec<u32>,
    text: String,
}

/// The legacy logprobs object: parallel arrays, one entry per token.
#[derive(Debug, Default, Serialize)]
struct LegacyLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Option<Map<String, Value>>>,
    text_offset: Vec<usize>,
}

impl LegacyLogprobs {
    fn push(&mut self, state: &AppState, id: u32, lp: Option<&TokenLogprob>, offset: &mut usize) {
        let text = state.token_text(id);
        self.text_offset.push(*offset);
        *offset += text.chars().count();
        self.tokens.push(text);
        self.token_logprobs.push(lp.map(|l| l.logprob));
        self.top_logprobs.push(lp.map(|l| l.top.iter().map(|&(t, v)| (state.token_text(t), json!(v))).collect()));
    }
}

/// Everything in a completion request that can be checked without the model: `n`, the
/// unsupported fields and the generation parameters. (Also what the HTTP fuzz target runs.)
pub fn validate(req: &CompletionRequest, n_vocab: usize) -> Result<(usize, GenerateParams), ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param("suffix", "suffix (insertion) is not supported by this model"));
    }
    let n = choices_per_prompt(req.n)?;
    if req.best_of.is_some_and(|b| b != n as i64) {
        return Err(ApiError::invalid_param("best_of", "best_of other than n is not supported"));
    }
    let count = match &req.prompt {
        None => return Err(ApiError::invalid_param("prompt", "prompt is required")),
        Some(PromptField::Text(_)) | Some(PromptField::Tokens(_)) => 1,
        Some(PromptField::Texts(v)) => v.len(),
        Some(PromptField::TokenLists(v)) => v.len(),
    };
    if count == 0 || count > MAX_PROMPTS {
        return Err(ApiError::invalid_param("prompt", format!("give between 1 and {MAX_PROMPTS} prompts")));
    }
    let mut params = req.sampling.to_params(n_vocab)?;
    params.max_tokens = max_tokens(req.max_tokens, 16, "max_tokens")?;
    params.logprobs = logprob_count(req.logprobs, "logprobs")?;
    if req.echo {
        params.prompt_logprobs = params.logprobs;
    }
    Ok((n, params))
}

/// Most prompts in one request.
const MAX_PROMPTS: usize = 16;

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream` server-sent events of `text_completion` chunks ending in `data: [DONE]`", content((CompletionResponse = "application/json"), (String = "text/event-stream"))),
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
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let n_ctx = state.engine.n_ctx;
    let (n, params) = validate(&req, state.engine.model.config.n_vocab)?;
    // Texts that cannot fit the context are refused before any is tokenized.
    if let Some(PromptField::Text(t)) = &req.prompt {
        state.limits.check_text("prompt", t.len(), n_ctx)?;
    }
    if let Some(PromptField::Texts(v)) = &req.prompt {
        for t in v {
            state.limits.check_text("prompt", t.len(), n_ctx)?;
        }
    }
    let slot = state.limits.admit(&client)?;
    let (st, field) = (state.clone(), req.prompt.clone());
    let prompts = state.limits.blocking(move || prompts(&st, field.as_ref())).await??;
    let (mut tokens, mut entries) = (0usize, 0usize);
    for p in &prompts {
        let (t, e) = Limits::cost(n, p.tokens.len(), params.max_tokens, n_ctx, params.logprobs, req.echo);
        tokens = tokens.saturating_add(t);
        entries = entries.saturating_add(e);
    }
    state.limits.check_budget(prompts.len() * n, tokens, entries)?;
    let model = state.engine.model_id.clone();
    let id = new_id("cmpl");
    let created = unix_now();
    // (choice index, prompt, params) in order; each choice gets its own seed.
    let runs: Vec<(usize, Prompt, GenerateParams)> = prompts
        .into_iter()
        .enumerate()
        .flat_map(|(pi, p)| {
            let params = params.clone();
            (0..n).map(move |k| {
                let mut pk = params.clone();
                pk.seed = params.seed.wrapping_add(k as u64);
                (pi * n + k, Prompt { tokens: p.tokens.clone(), text: p.text.clone() }, pk)
            })
        })
        .collect();

    let jobs = runs.iter().map(|(_, prompt, p)| (prompt.tokens.clone(), p.clone())).collect();
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let choices = stream::run(state.clone(), jobs, client)?;
        let per_choice = runs.into_iter().map(|(_, prompt, p)| (prompt, p.logprobs.is_some(), 0)).collect();
        let chunks = CompletionChunks { state, id, created, model, echo: req.echo, choices: per_choice };
        return Ok(stream::sse(choices, slot, include_usage, chunks));
    }
    let collected = stream::collect_all(&state, jobs, &client).await?;
    let mut choices = vec![];
    let mut usage = Usage::default();
    for ((index, prompt, p), c) in runs.into_iter().zip(collected) {
        let want_lp = p.logprobs.is_some();
        let finish = c.finish.expect("collected");
        usage.add(&finish);
        let mut logprobs = LegacyLogprobs::default();
        let mut offset = 0;
        let mut text = String::new();
        if req.echo {
            text.push_str(&prompt.text);
            if want_lp {
                let lps = c.prompt_logprobs.unwrap_or_default();
                for (i, &tok) in prompt.tokens.iter().enumerate() {
                    logprobs.push(&state, tok, lps.get(i).and_then(Option::as_ref), &mut offset);
                }
            }
        }
        text.push_str(&c.text);
        for (tok, lp) in &c.tokens {
            logprobs.push(&state, *tok, lp.as_ref(), &mut offset);
        }
        choices.push(json!({
            "text": text,
            "index": index,
            "logprobs": if want_lp { json!(logprobs) } else { Value::Null },
            "finish_reason": finish.reason.as_str(),
        }));
    }
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": crate::FINGERPRINT,
        "choices": choices,
        "usage": usage,
    }))
    .into_response())
}

/// Tokenizes the prompt field into one or more prompts.
fn prompts(state: &AppState, field: Option<&PromptField>) -> Result<Vec<Prompt>, ApiError> {
    let tk = &state.engine.tokenizer;
    let n_vocab = state.engine.model.config.n_vocab;
    let from_text =
        |s: &str| -> Result<Prompt, ApiError> { Ok(Prompt { tokens: state.completion_prompt(s)?, text: s.to_string() }) };
    let from_tokens = |t: &[u32]| -> Result<Prompt, ApiError> {
        if let Some(bad) = t.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(ApiError::invalid_param("prompt", format!("token id {bad} is outside the vocabulary of {n_vocab}")));
        }
        Ok(Prompt { tokens: t.to_vec(), text: tk.decode(t, false) })
    };
    let list = match field {
        None => return Err(ApiError::invalid_param("prompt", "prompt is required")),
        Some(PromptField::Text(s)) => vec![from_text(s)?],
        Some(PromptField::Tokens(t)) => vec![from_tokens(t)?],
        Some(PromptField::Texts(v)) => v.iter().map(|s| from_text(s)).collect::<Result<_, _>>()?,
        Some(PromptField::TokenLists(v)) => v.iter().map(|t| from_tokens(t)).collect::<Result<_, _>>()?,
    };
    if list.is_empty() || list.len() > MAX_PROMPTS {
        return Err(ApiError::invalid_param("prompt", format!("give between 1 and {MAX_PROMPTS} prompts")));
    }
    if list.iter().any(|p| p.tokens.is_empty()) {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    Ok(list)
}

/// `text_completion` chunks: with `echo`, a choice opens with its prompt text (and, with
/// `logprobs`, the prompt's logprobs once they are known); then its tokens; then the held-back
/// tail with the finish reason.
struct CompletionChunks {
    state: Arc<AppState>,
    id: String,
    created: u64,
    model: String,
    echo: bool,
    /// Per choice: its prompt, whether it asked for logprobs, and the text offset so far.
    choices: Vec<(Prompt, bool, usize)>,
}

impl CompletionChunks {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "system_fingerprint": crate::FINGERPRINT, "choices": choices,
        })
    }

    fn text(&self, index: usize, text: &str, logprobs: Value, finish: Value) -> Value {
        self.chunk(json!([{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}]))
    }
}

impl Chunks for CompletionChunks {
    fn choice(&mut self, index: usize, event: &ChoiceEvent) -> Vec<Value> {
        let state = self.state.clone();
        let (prompt, want_lp, offset) = &mut self.choices[index];
        let (want_lp, prompt_text) = (*want_lp, prompt.text.clone());
        match event {
            ChoiceEvent::Started if self.echo && !want_lp => vec![self.text(index, &prompt_text, Value::Null, Value::Null)],
            ChoiceEvent::Started => vec![],
            ChoiceEvent::Prompt(lps) => {
                let mut lp = LegacyLogprobs::default();
                for (i, &tok) in prompt.tokens.iter().enumerate() {
                    lp.push(&state, tok, lps.get(i).and_then(Option::as_ref), offset);
                }
                vec![self.text(index, &prompt_text, json!(lp), Value::Null)]
            }
            ChoiceEvent::Token { id, text, logprob } => {
                let lp = if want_lp {
                    let mut lp = LegacyLogprobs::default();
                    lp.push(&state, *id, logprob.as_ref(), offset);
                    json!(lp)
                } else {
                    Value::Null
                };
                vec![self.text(index, text, lp, Value::Null)]
            }
            ChoiceEvent::Finished(f) => vec![self.text(index, &f.tail, Value::Null, json!(f.reason.as_str()))],
        }
    }

    fn usage(&mut self, usage: &Usage) -> Value {
        let mut last = self.chunk(json!([]));
        last["usage"] = json!(usage);
        last
    }
}
