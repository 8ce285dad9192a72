//! `GET /api/queue` (the queue as a whole) and `GET /api/queue/{ticket}` (one request's place in
//! line). A streamed completion names its ticket in the `x-shard-queue-ticket` header and
//! also reports its place as SSE comments while it waits. Ticket ids are random, so only the
//! request's own client can look it up.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

pub async fn overview(State(state): State<Arc<AppState>>) -> Json<Value> {
    let q = &state.queue;
    let (issued, finished) = q.tickets();
    // What a request sent now would face.
    let next = q.status_of_next();
    Json(json!({
        "depth": q.stats.depth.load(Ordering::SeqCst),
        "capacity": q.capacity,
        "running": issued > finished,
        "waiting": issued.saturating_sub(finished).saturating_sub(1),
        "tickets_issued": issued,
        "tickets_done": finished,
        "avg_request_ms": q.stats.avg_job_ms.load(Ordering::Relaxed),
        "est_wait_ms": next.est_wait_ms,
        "tiers": [{"tier": "leech", "depth": q.stats.depth.load(Ordering::SeqCst)}],
    }))
}

pub async fn ticket(State(state): State<Arc<AppState>>, Path(ticket): Path<String>) -> Result<Json<Value>, ApiError> {
    match state.queue.status(&ticket) {
        Some(status) => Ok(Json(json!(status))),
        None => Err(ApiError::not_found_message("no such ticket (or it finished a while ago)")),
    }
}
