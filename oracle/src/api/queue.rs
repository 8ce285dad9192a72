//! `GET /api/queue` (the queue as a whole) and `GET /api/queue/{ticket}` (one request's place in
//! line). A streamed completion names its ticket in the `x-shard-queue-ticket` header and
//! also reports its place as SSE comments while it waits.

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
    let next = q.status(issued);
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
    let t: u64 = ticket.parse().map_err(|_| ApiError::invalid_param("ticket", format!("{ticket:?} is not a ticket number")))?;
    let (issued, _) = state.queue.tickets();
    if t >= issued {
        return Err(ApiError::not_found_message(format!("no ticket {t} has been issued")));
    }
    Ok(Json(json!(state.queue.status(t))))
}
