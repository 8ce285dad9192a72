//! The swarm as JSON: `GET /api/swarm` (peers, roles, transports, acceptance, jobs, load) and
//! `GET /api/p2p/addrs` (where browsers and Scouts dial the Oracle).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::openapi::{Addrs, ErrorBody, ScoutSetup, Swarm};
use super::AppState;

#[utoipa::path(
    get,
    path = "/api/swarm",
    tag = "shard",
    responses(
        (status = 200, description = "The Oracle's load and every Scout", body = Swarm),
        (status = 404, description = "The Oracle runs without its p2p node", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn swarm(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let p2p =
        state.p2p.as_ref().ok_or_else(|| ApiError::not_found_message("this Oracle runs without its p2p node (--no-p2p)"))?;
    let (scouts, stale_answers) = p2p.scouts.snapshot();
    let info = p2p.node.info.lock().unwrap_or_else(|e| e.into_inner());
    let peers: Vec<Value> = info
        .peers
        .iter()
        .filter(|(id, _)| !scouts.iter().any(|s| &s.peer_id == *id))
        .map(|(id, p)| json!({"peer_id": id, "role": "peer", "transport": p.transport}))
        .collect();
    let q = &state.queue.stats;
    Ok(Json(json!({
        "oracle": {
            "peer_id": info.peer_id,
            "model": state.engine.model_id,
            "draft_model": {"id": p2p.scouts.model().id, "sha256": hex(&p2p.scouts.model().sha256)},
            "queue_depth": q.depth.load(Ordering::SeqCst),
            "queue_capacity": state.queue.capacity,
            "tokens_per_s": info.tokens_per_s,
            "tokens_generated": q.tokens_generated.load(Ordering::Relaxed),
            "dropped_peers": info.dropped_peers,
            "stale_draft_answers": stale_answers,
            "batch": q.steps.summary(),
        },
        "scouts": scouts,
        "peers": peers,
    })))
}

#[utoipa::path(
    get,
    path = "/api/p2p/addrs",
    tag = "shard",
    responses(
        (status = 200, description = "The libp2p addresses to dial", body = Addrs),
        (status = 404, description = "The Oracle runs without its p2p node", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn addrs(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let p2p =
        state.p2p.as_ref().ok_or_else(|| ApiError::not_found_message("this Oracle runs without its p2p node (--no-p2p)"))?;
    let info = p2p.node.info.lock().unwrap_or_else(|e| e.into_inner());
    let pick = |kind: &str| -> Vec<&String> {
        info.addrs
            .iter()
            .filter(|a| match kind {
                "webrtc-direct" => a.contains("/webrtc-direct/"),
                "websocket" => a.contains("/ws/"),
                _ => a.contains("/tcp/") && !a.contains("/ws/"),
            })
            .collect()
    };
    Ok(Json(json!({
        "peer_id": info.peer_id,
        "webrtc_direct": pick("webrtc-direct"),
        "websocket": pick("websocket"),
        "tcp": pick("tcp"),
    })))
}

/// Everything a browser Scout needs: the draft model (URL, size, sha256 to check the download
/// against) and the addresses to dial, webrtc-direct first.
#[utoipa::path(
    get,
    path = "/api/scout",
    tag = "shard",
    responses(
        (status = 200, description = "What a browser Scout needs", body = ScoutSetup),
        (status = 404, description = "The Oracle runs without its p2p node", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn scout(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let p2p =
        state.p2p.as_ref().ok_or_else(|| ApiError::not_found_message("this Oracle runs without its p2p node (--no-p2p)"))?;
    let m = &p2p.scout_model;
    let name = m.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Json(addrs) = addrs(State(state.clone())).await?;
    Ok(Json(json!({
        "model": {
            "id": p2p.scouts.model().id,
            "url": format!("/models/{name}"),
            "sha256": m.sha256,
            "bytes": m.bytes,
        },
        "addrs": addrs,
    })))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
