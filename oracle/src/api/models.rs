//! `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` and `GET /metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::openapi::{ErrorBody, Health, ModelCard, ModelList};
use super::AppState;

fn model_object(state: &AppState) -> Value {
    let c = &state.engine.model.config;
    json!({
        "id": state.engine.model_id,
        "object": "model",
        "created": state.started,
        "owned_by": "shard",
        "meta": {
            "architecture": c.arch,
            "n_vocab": c.n_vocab,
            "n_ctx_train": c.n_ctx_train,
            "n_ctx": state.engine.n_ctx,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "kernel": state.engine.kernel.name(),
        },
    })
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "The loaded model", body = ModelList),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "openai",
    params(("id" = String, Path, description = "The model id")),
    responses(
        (status = 200, description = "The model", body = ModelCard),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn get_one(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id != state.engine.model_id {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(model_object(&state)))
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "shard",
    responses(
        (status = 200, description = "The Oracle is up", body = Health),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let s = &state.queue.stats;
    Json(json!({
        "status": "ok",
        "model": state.engine.model_id,
        "queue_depth": s.depth.load(Ordering::SeqCst),
        "queue_capacity": state.queue.capacity,
        "requests_completed": s.completed.load(Ordering::Relaxed),
        "tokens_generated": s.tokens_generated.load(Ordering::Relaxed),
        "requests_stalled": s.stalled.load(Ordering::Relaxed),
    }))
}

/// Prometheus text exposition of the queue and speculative-decoding counters.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "shard",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl axum::response::IntoResponse {
    use std::fmt::Write;
    let s = &state.queue.stats;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP shard_queue_depth Requests waiting or running.\n# TYPE shard_queue_depth gauge\nshard_queue_depth {}",
        s.depth.load(Ordering::SeqCst)
    );
    let _ = writeln!(out, "# HELP shard_requests_completed_total Requests finished.\n# TYPE shard_requests_completed_total counter\nshard_requests_completed_total {}", s.completed.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP shard_requests_stalled_total Requests cancelled because their client stopped reading.\n# TYPE shard_requests_stalled_total counter\nshard_requests_stalled_total {}", s.stalled.load(Ordering::Relaxed));
    s.spec.render(&mut out);
    s.steps.render(&mut out);
    let t = &state.trust.tickets;
    for (name, help, v) in [
        ("picked", "Answered Scout jobs picked as golden tickets.", &t.picked),
        ("dropped", "Tickets dropped because the checker's queue was full.", &t.dropped),
        ("passed", "Tickets passed.", &t.passed),
        ("failed", "Tickets failed.", &t.failed),
        ("void", "Tickets with no position clear enough to judge.", &t.void),
        ("bans", "Scouts banned by the sequential test.", &t.bans),
    ] {
        let _ = writeln!(
            out,
            "# HELP shard_tickets_{name}_total {help}\n# TYPE shard_tickets_{name}_total counter\nshard_tickets_{name}_total {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP shard_ticket_check_seconds_total Time the reference draft model spent on tickets.\n# TYPE shard_ticket_check_seconds_total counter\nshard_ticket_check_seconds_total {:.6}", t.check_micros.load(Ordering::Relaxed) as f64 / 1e6);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
