//! The HTTP API: OpenAI-compatible completions and chat, llama.cpp-style tokenize/detokenize,
//! model listing and health. Handlers validate, enqueue on the [`InferenceQueue`] and either
//! collect the result or stream it as server-sent events.

pub mod chat;
pub mod completions;
pub mod error;
pub mod json;
pub mod limits;
pub mod me;
pub mod models;
pub mod openapi;
pub mod queue;
pub mod stream;
pub mod swarm;
pub mod tokenize;
pub mod trust;
pub mod types;
pub mod web;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::Router;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::generate::{GenerateError, GenerateParams};
use crate::engine::Engine;
use crate::queue::{InferenceQueue, JobError, Placement, QueueStatus, Submission, Tier};
use crate::trust::Trust;
use error::ApiError;
use limits::{Client, Limits};
use shard_shared::chat::ChatMessage;

/// What every handler shares.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub queue: InferenceQueue,
    /// Unix time the server started, reported as the model's `created`.
    pub started: u64,
    /// The libp2p node and its Scouts, unless the Oracle runs without them.
    pub p2p: Option<P2pState>,
    /// The web app (trunk's output), served at `/` when present.
    pub web_dir: Option<std::path::PathBuf>,
    /// What one request may cost ([`limits`]).
    pub limits: Arc<Limits>,
    /// Operator keys, Scout identities and credits.
    pub trust: Arc<Trust>,
}

pub struct P2pState {
    pub node: crate::p2p::node::Node,
    pub scouts: Arc<crate::p2p::scheduler::ScoutDrafts>,
    /// The draft model file Scouts download (`GET /models/{name}`).
    pub scout_model: web::HashedFile,
}

impl AppState {
    /// Accepts a request's `model` field if it names this server's model (or is absent).
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None => Ok(()),
            Some(m) if m == self.engine.model_id || m.is_empty() => Ok(()),
            Some(m) => Err(ApiError::model_not_found(m)),
        }
    }

    /// The text of a token as the API shows it (control tokens by name).
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.engine.tokenizer.piece(id).unwrap_or_default()).into_owned()
    }

    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.engine.tokenizer.piece(id).unwrap_or_default().to_vec()
    }

    /// Enqueues a generation for `client`, turning a full queue into 429.
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams, client: &Client) -> Result<Submission, ApiError> {
        if prompt.len() >= self.engine.n_ctx {
            return Err(job_error(JobError::Generate(GenerateError::ContextExceeded {
                prompt: prompt.len(),
                n_ctx: self.engine.n_ctx,
            })));
        }
        let tier = client.caller.tier;
        let cfg = &self.trust.config;
        let placement = Placement {
            tier,
            client: self.limits.client_key(client),
            payer: (tier == Tier::Scout).then_some(client.caller.peer).flatten(),
            scouts_may_read: !client.private
                && cfg.scout_text != crate::trust::ScoutText::None
                && (tier != Tier::Oracle || cfg.oracle_requests_to_scouts),
        };
        self.queue.submit(prompt, params, placement).map_err(|full| ApiError::queue_full(full.retry_after_secs))
    }

    /// Tokenizes a prompt for the completion endpoints (special tokens parsed, as llama.cpp's
    /// server does), after checking that it can fit the context at all. Blocking work.
    pub fn completion_prompt(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.limits.check_text("prompt", text.len(), self.engine.n_ctx)?;
        self.engine.tokenizer.encode_prompt(text).map_err(|e| ApiError::invalid_param("prompt", e.to_string()))
    }

    /// Renders a conversation with the model's template and tokenizes it ([`chat_prompt`]).
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
        chat_prompt(&self.engine, &self.limits, messages)
    }
}

/// Renders a conversation with the model's template and tokenizes it. Message content is
/// text: control-token text inside a message stays text, so a user cannot open a system turn
/// by typing its markers. Blocking work.
pub fn chat_prompt(engine: &Engine, limits: &Limits, messages: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
    let n_ctx = engine.n_ctx;
    let content: usize = messages.iter().map(|m| m.content.len()).sum();
    limits.check_text("messages", content, n_ctx)?;
    let segments =
        engine.chat_template.render_segments(messages, true).map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
    let rendered: usize = segments.iter().map(|s| s.text.len()).sum();
    limits.check_text("messages", rendered, n_ctx)?;
    let tk = &engine.tokenizer;
    let err = |e: shard_shared::tokenizer::TokenizerError| ApiError::invalid_param("messages", e.to_string());
    // Where no content holds control-token text, tokenize the rendered prompt whole, as
    // llama.cpp does (byte for byte the same tokens); otherwise piece by piece.
    let mut injected = false;
    for s in segments.iter().filter(|s| s.content) {
        if tk.encode(&s.text, false, true).map_err(err)? != tk.encode(&s.text, false, false).map_err(err)? {
            injected = true;
            break;
        }
    }
    if !injected {
        let whole: String = segments.iter().map(|s| s.text.as_str()).collect();
        return tk.encode_prompt(&whole).map_err(err);
    }
    let mut ids = vec![];
    if tk.add_bos() {
        ids.extend(tk.bos());
    }
    for s in &segments {
        let piece = tk.encode(&s.text, false, !s.content).map_err(err)?;
        // The template may write the BOS itself.
        let skip = usize::from(ids.len() == 1 && piece.first().is_some_and(|t| Some(*t) == tk.bos()));
        ids.extend_from_slice(&piece[skip..]);
    }
    Ok(ids)
}

/// Every API route with its OpenAPI entry ([`openapi`]): a route is registered with its
/// description or not at all.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(models::list))
        .routes(routes!(models::get_one))
        .routes(routes!(completions::handler))
        .routes(routes!(chat::handler))
        .routes(routes!(tokenize::tokenize))
        .routes(routes!(tokenize::detokenize))
        .routes(routes!(models::health))
        .routes(routes!(models::metrics))
        .routes(routes!(swarm::swarm))
        .routes(routes!(swarm::addrs))
        .routes(routes!(swarm::scout))
        .routes(routes!(queue::overview))
        .routes(routes!(queue::ticket))
        .routes(routes!(me::me))
        .routes(routes!(trust::peer))
        .routes(routes!(trust::tickets))
        .routes(routes!(model_file))
        .routes(routes!(openapi_json))
}

/// Builds the router. `max_body_bytes` caps request bodies (413 beyond).
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let (router, api) = routes().split_for_parts();
    let spec = Arc::new(api.to_pretty_json().expect("the spec serializes"));
    router
        .layer(axum::Extension(OpenApiSpec(spec)))
        .fallback(app_or_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Proves who every request is from (see `trust::auth`) before any route runs: a bad
/// credential is a 401 in OpenAI's shape on every route, a good one travels with the request
/// as a [`crate::trust::Caller`].
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    match state.trust.authenticate(header.as_deref()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(crate::trust::auth::AuthError::Store(e)) => {
            ApiError::internal(format!("checking credentials failed: {e}")).into_response()
        }
        Err(e) => ApiError::unauthorized(e.to_string()).into_response(),
    }
}

/// The served spec, made once at start-up.
#[derive(Clone)]
struct OpenApiSpec(Arc<String>);

/// `GET /openapi.json`: this API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "shard",
    responses(
        (status = 200, description = "The OpenAPI description of this API", body = Object, content_type = "application/json"),
        (status = 401, description = "An invalid credential", body = openapi::ErrorBody)
    ),
    security((), ("bearer" = []))
)]
async fn openapi_json(axum::Extension(OpenApiSpec(spec)): axum::Extension<OpenApiSpec>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "application/json")], spec.as_str().to_owned()).into_response()
}

/// `GET /models/{file}`: the Scouts' draft model, by its file name.
#[utoipa::path(
    get,
    path = "/models/{file}",
    tag = "shard",
    params(("file" = String, Path, description = "The draft model's file name, as /api/scout names it")),
    responses(
        (status = 200, description = "The file (ranges and a strong ETag supported)", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "No such file", body = openapi::ErrorBody),
        (status = 416, description = "A range outside the file"),
        (status = 401, description = "An invalid credential", body = openapi::ErrorBody)
    ),
    security((), ("bearer" = []))
)]
async fn model_file(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(file): axum::extract::Path<String>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.p2p.as_ref().map(|p| &p.scout_model) {
        Some(m) if m.path.file_name().is_some_and(|n| n.to_string_lossy() == file) => web::serve_hashed(m, req).await,
        _ => ApiError::not_found_message(format!("no model file {file:?} is served here")).into_response(),
    }
}

/// The web app for GET and HEAD requests outside the API, else OpenAI's JSON 404.
async fn app_or_not_found(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = req.uri().clone();
    let is_read = matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if let (true, Some(dir)) = (is_read, &state.web_dir) {
        if let Some(resp) = web::serve_app(dir, req).await {
            return resp;
        }
    }
    error::not_found(uri).await.into_response()
}

pub fn job_error(e: JobError) -> ApiError {
    match e {
        JobError::Generate(GenerateError::ContextExceeded { prompt, n_ctx }) => ApiError::context_exceeded(format!(
            "This model's maximum context length is {n_ctx} tokens, but the prompt has {prompt} tokens."
        )),
        JobError::Generate(e) => ApiError::invalid(e.to_string()),
        JobError::Internal(m) => ApiError::internal(m),
        e @ JobError::CacheFull(_) => ApiError::busy(e.to_string()),
    }
}

/// A queue update inside an SSE stream, as a comment line (`: queue {...}`): Shard's web app
/// reads it to show the place in line, and OpenAI clients skip comments by the SSE rules.
pub fn queue_comment(status: &QueueStatus) -> axum::response::sse::Event {
    axum::response::sse::Event::default().comment(format!("queue {}", serde_json::to_string(status).unwrap_or_default()))
}

/// Names a streamed response's queue ticket (`x-shard-queue-ticket`), for `GET /api/queue/{ticket}`.
pub fn with_ticket(mut response: axum::response::Response, ticket: &str) -> axum::response::Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(ticket) {
        response.headers_mut().insert("x-shard-queue-ticket", v);
    }
    response
}

/// Validates a `logprobs`/`top_logprobs` count.
pub fn logprob_count(v: Option<i64>, param: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if (0..=types::MAX_LOGPROBS as i64).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid_param(param, format!("{param} must be between 0 and {}, got {n}", types::MAX_LOGPROBS))),
    }
}
