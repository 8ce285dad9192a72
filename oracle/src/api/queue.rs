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
use super::openapi::{ErrorBody, QueueOverview, QueueStatus};
use super::AppState;
use crate::queue::Tier;

#[utoipa::path(
    get,
    path = "/api/queue",
    tag = "shard",
    responses(
        (status = 200, description = "The queue, per tier", body = QueueOverview),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn overview(State(state): State<Arc<AppState>>) -> Json<Value> {
    let q = &state.queue;
    let (waiting, running) = q.rooms();
    let tiers: Vec<Value> = Tier::ALL
        .iter()
        .zip(waiting)
        .enumerate()
        .map(|(i, (tier, n))| {
            json!({
                "tier": tier,
                "waiting": n,
                "capacity": q.capacity,
                "refused": q.stats.refused[i].load(Ordering::Relaxed),
                // What a request of this tier sent now would face.
                "est_wait_ms": q.status_of_next(*tier).est_wait_ms,
            })
        })
        .collect();
    Json(json!({
        "depth": q.stats.depth.load(Ordering::SeqCst),
        "capacity": q.capacity,
        "running": running > 0,
        "active": running,
        "slots": q.slots(),
        "waiting": waiting.iter().sum::<usize>(),
        "accepted": q.accepted(),
        "completed": q.stats.completed.load(Ordering::Relaxed),
        "avg_request_ms": q.stats.avg_job_ms.load(Ordering::Relaxed),
        "est_wait_ms": q.status_of_next(Tier::Leech).est_wait_ms,
        "tiers": tiers,
    }))
}

#[utoipa::path(
    get,
    path = "/api/queue/{ticket}",
    tag = "shard",
    params(("ticket" = String, Path, description = "The ticket id from `x-shard-queue-ticket`")),
    responses(
        (status = 200, description = "One request's place in line", body = QueueStatus),
        (status = 404, description = "No such ticket", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn ticket(State(state): State<Arc<AppState>>, Path(ticket): Path<String>) -> Result<Json<Value>, ApiError> {
    match state.queue.status(&ticket) {
        Some(status) => Ok(Json(json!(status))),
        None => Err(ApiError::not_found_message("no such ticket (or it finished a while ago)")),
    }
}
