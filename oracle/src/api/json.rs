//! A JSON body extractor whose failures are OpenAI-shaped errors.
//!
//! axum's own `Json` answers bad bodies with plain text and a 415 or 422; OpenAI clients
//! expect a JSON error with 400 (or 413 for an oversized body). Like llama.cpp's server, the
//! body is parsed as JSON whatever its content type says.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError {
                    code: Some("request_too_large"),
                    ..ApiError::new(status, "invalid_request_error", "The request body is too large")
                }
            } else {
                ApiError::new(status, "invalid_request_error", rejection.body_text())
            }
        })?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Parses a request body as the API does: JSON whatever the content type, with errors that
/// name the offending field. (The HTTP fuzz target calls this too.)
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("The request body is empty; expected a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("The request body is not valid JSON: {inner}")
        } else {
            format!("Invalid request body: {inner}")
        };
        ApiError { param: (path != "." && !path.is_empty()).then_some(path), ..ApiError::invalid(message) }
    })
}
