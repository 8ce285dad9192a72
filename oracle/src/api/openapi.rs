//! The OpenAPI description of the API, generated from the code with utoipa: the routes are
//! registered through `utoipa_axum`'s router together with their `#[utoipa::path]`
//! annotations, so a route cannot exist without its entry. `GET /openapi.json` serves it, and
//! `docs/openapi.json` is the committed copy (`shard-oracle openapi` prints it; a test fails
//! when the two differ).
//!
//! Request bodies are the handlers' own types. Most responses are built as JSON values, so the
//! shapes below describe them; schemathesis (run by `scripts/test.sh`) checks every response
//! the live server gives against them.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The top of the spec; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Shard Oracle",
        description = "OpenAI-compatible completions and chat on a ternary BitNet model, llama.cpp-style tokenizing, and Shard's queue, swarm and trust endpoints. Errors are OpenAI-shaped (`{\"error\": {...}}`).",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "openai", description = "OpenAI-compatible routes"),
        (name = "llama.cpp", description = "llama.cpp server compatible routes"),
        (name = "shard", description = "Shard's own routes: health, queue, swarm, trust, files")
    )
)]
pub struct ApiDoc;

/// `Authorization: Bearer`: an operator key (`sk-shard-…`) or a Scout proof (`shard1.…`).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An operator key (`sk-shard-…`, the Oracle tier) or a Scout proof (`shard1.<peer id>.<ms>.<nonce>.<signature>`, see docs/protocol.md). Optional: without it a request is served as a Leech.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every error: OpenAI's shape.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelMeta {
    pub architecture: String,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_ctx: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub kernel: String,
}

#[derive(Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    pub meta: ModelMeta,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// The legacy completions logprobs: parallel arrays, one entry per token.
#[derive(Serialize, ToSchema)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<HashMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    pub logprobs: Option<LegacyLogprobs>,
    /// `stop`, `length` or `cancelled`.
    pub finish_reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: super::types::Usage,
}

#[derive(Serialize, ToSchema)]
pub struct ChatMessageOut {
    pub role: String,
    pub content: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: super::types::Usage,
}

/// A token of `/tokenize`: its id, or with `with_pieces` its id and piece (text when the
/// piece is valid UTF-8, else its bytes).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TokenOut {
    Id(u32),
    WithPiece { id: u32, piece: Piece },
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Piece {
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<TokenOut>,
}

#[derive(Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub content: String,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when it answers.
    pub status: String,
    pub model: String,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub requests_completed: u64,
    pub tokens_generated: u64,
    pub requests_stalled: u64,
}

/// One request's place in line (also the SSE `: queue` comments' payload).
#[derive(Serialize, ToSchema)]
pub struct QueueStatus {
    pub ticket: String,
    pub ahead: u64,
    #[schema(value_type = String, example = "waiting")]
    /// `waiting`, `running` or `done`.
    pub state: String,
    pub est_wait_ms: u64,
    /// `oracle`, `scout` or `leech`.
    pub tier: String,
}

#[derive(Serialize, ToSchema)]
pub struct TierLoad {
    pub tier: String,
    pub waiting: usize,
    pub capacity: usize,
    pub refused: u64,
    pub est_wait_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct QueueOverview {
    pub depth: usize,
    pub capacity: usize,
    /// Whether any request runs.
    pub running: bool,
    /// Requests running (each in a slot).
    pub active: usize,
    /// Requests that may run at once (`--parallel`).
    pub slots: usize,
    pub waiting: usize,
    pub accepted: u64,
    pub completed: u64,
    pub avg_request_ms: u64,
    pub est_wait_ms: u64,
    pub tiers: Vec<TierLoad>,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    /// `oracle`, `scout` or `leech`.
    pub tier: String,
    pub peer_id: Option<String>,
    pub key_name: Option<String>,
    pub credits: i64,
    pub credits_earned: u64,
    pub credits_spent: u64,
    /// Credits earned on probation, released when it ends.
    pub held_credits: i64,
    /// In [0, 1]; null without a Scout identity.
    pub reputation: Option<f64>,
    /// Whether the Scout is still on probation (null without a Scout identity).
    pub probation: Option<bool>,
    pub tickets_passed: u64,
    pub tickets_failed: u64,
    /// Unix seconds; null when not banned.
    pub banned_until: Option<u64>,
    pub credits_per_generated_token: i64,
    pub credits_per_accepted_token: i64,
}

#[derive(Serialize, ToSchema)]
pub struct DraftModelRef {
    pub id: String,
    pub sha256: String,
}

#[derive(Serialize, ToSchema)]
pub struct SwarmOracle {
    pub peer_id: String,
    pub model: String,
    pub draft_model: DraftModelRef,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub tokens_per_s: f64,
    pub tokens_generated: u64,
    pub dropped_peers: u64,
    pub stale_draft_answers: u64,
    /// The step loop: slots, tokens per pass, pass time, latencies.
    pub batch: crate::queue::metrics::StepSummary,
}

#[derive(Serialize, ToSchema)]
pub struct PeerRow {
    pub peer_id: String,
    pub role: String,
    pub transport: String,
}

#[derive(Serialize, ToSchema)]
pub struct Swarm {
    pub oracle: SwarmOracle,
    pub scouts: Vec<crate::p2p::scheduler::ScoutView>,
    pub peers: Vec<PeerRow>,
}

#[derive(Serialize, ToSchema)]
pub struct Addrs {
    pub peer_id: String,
    pub webrtc_direct: Vec<String>,
    pub websocket: Vec<String>,
    pub tcp: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ScoutModel {
    pub id: String,
    pub url: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ScoutSetup {
    pub model: ScoutModel,
    pub addrs: Addrs,
}

/// The committed spec, for the test that compares it with the served one.
pub fn json() -> String {
    let (_, api) = super::routes().split_for_parts();
    api.to_pretty_json().expect("the spec serializes")
}
