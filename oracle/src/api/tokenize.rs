//! `POST /tokenize` and `POST /detokenize`, shaped like llama.cpp's server.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::ApiJson;
use super::openapi::{DetokenizeResponse, ErrorBody, TokenizeResponse};
use super::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenizeRequest {
    pub content: String,
    /// Prepend BOS when the vocabulary uses one.
    #[serde(default)]
    pub add_special: bool,
    /// Turn control-token text such as `<|im_start|>` into the control token.
    #[serde(default = "yes")]
    pub parse_special: bool,
    /// Return `{id, piece}` objects instead of bare ids.
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// Tokenizes like llama.cpp's server, for texts up to what could fit the context (longer ones
/// get 400 before any work is spent on them). The work runs on a blocking thread.
#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "llama.cpp",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "The tokens", body = TokenizeResponse),
        (status = 400, description = "A malformed body or a parameter out of bounds", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorBody),
        (status = 429, description = "The tier's room is full, or this client has too many requests; see Retry-After", body = ErrorBody),
        (status = 503, description = "Request preparation could not start in time", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.content.len() > state.limits.max_text_bytes {
        return Err(ApiError::invalid_param(
            "content",
            format!(
                "content of {} bytes is longer than this model's context can hold ({} tokens; at most {} bytes are \
                 tokenized)",
                req.content.len(),
                state.engine.n_ctx,
                state.limits.max_text_bytes
            ),
        ));
    }
    let st = state.clone();
    state.limits.blocking(move || tokenize_blocking(&st, &req)).await?
}

fn tokenize_blocking(state: &AppState, req: &TokenizeRequest) -> Result<Json<Value>, ApiError> {
    let tk = &state.engine.tokenizer;
    let ids = tk
        .encode(&req.content, req.add_special && tk.add_bos(), req.parse_special)
        .map_err(|e| ApiError::invalid_param("content", e.to_string()))?;
    if !req.with_pieces {
        return Ok(Json(json!({ "tokens": ids })));
    }
    let tokens: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let bytes = state.token_bytes(id);
            // llama.cpp gives the piece as a string when it is valid UTF-8, else as bytes.
            let piece = match String::from_utf8(bytes.clone()) {
                Ok(s) => json!(s),
                Err(_) => json!(bytes),
            };
            json!({ "id": id, "piece": piece })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

#[utoipa::path(
    post,
    path = "/detokenize",
    tag = "llama.cpp",
    request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "The text", body = DetokenizeResponse),
        (status = 400, description = "A malformed body or a parameter out of bounds", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorBody),
        (status = 429, description = "The tier's room is full, or this client has too many requests; see Retry-After", body = ErrorBody),
        (status = 503, description = "Request preparation could not start in time", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let n_vocab = state.engine.tokenizer.n_vocab();
    let most = 8 * state.engine.n_ctx;
    if req.tokens.len() > most {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("{} tokens are too many; at most {most} are decoded", req.tokens.len()),
        ));
    }
    let mut ids = Vec::with_capacity(req.tokens.len());
    for &t in &req.tokens {
        if t < 0 || t as usize >= n_vocab {
            return Err(ApiError::invalid_param("tokens", format!("token id {t} is outside the vocabulary of {n_vocab}")));
        }
        ids.push(t as u32);
    }
    Ok(Json(json!({ "content": state.engine.tokenizer.decode(&ids, true) })))
}
