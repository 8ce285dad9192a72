//! `GET /api/trust/peers/{peer_id}` (a peer's standing) and `GET /api/trust/tickets?peer=ID`
//! (its signed golden-ticket records, which `shard-oracle tickets verify` checks offline).
//!
//! Both are public: a Scout can audit how it is judged. A record is published only after its
//! job was answered and checked, and tickets are picked at random after the answer, so
//! knowing past tickets tells nothing about which future job will be one.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::AppState;
use crate::trust::store::MAX_TICKETS_PER_PEER;
use crate::trust::ticket::TicketView;
use crate::trust::PeerStanding;

#[derive(Serialize, utoipa::ToSchema)]
pub struct PeerTrust {
    pub peer_id: String,
    #[serde(flatten)]
    pub standing: PeerStanding,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketList {
    /// The Oracle whose key signed the records.
    pub oracle_peer_id: String,
    pub peer_id: String,
    /// Oldest first.
    pub tickets: Vec<TicketView>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct TicketQuery {
    /// The Scout's peer id.
    pub peer: String,
    /// The newest this many records (default 100).
    pub limit: Option<u64>,
}

fn parse_peer(s: &str, param: &str) -> Result<PeerId, ApiError> {
    if s.len() > 128 {
        return Err(ApiError::invalid_param(param, "a peer id is at most 128 characters"));
    }
    s.parse().map_err(|_| ApiError::invalid_param(param, format!("{s:?} is not a libp2p peer id")))
}

#[utoipa::path(
    get,
    path = "/api/trust/peers/{peer_id}",
    tag = "shard",
    params(("peer_id" = String, Path, description = "The peer's libp2p id")),
    responses(
        (status = 200, description = "The peer's reputation, credits, tickets, probation and ban", body = PeerTrust),
        (status = 400, description = "Not a peer id", body = ErrorBody),
        (status = 404, description = "The Oracle has no record of this peer", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn peer(State(state): State<Arc<AppState>>, Path(peer_id): Path<String>) -> Result<Json<PeerTrust>, ApiError> {
    let peer = parse_peer(&peer_id, "peer_id")?;
    let record = state.trust.store.peer(&peer.to_bytes()).map_err(|e| ApiError::internal(e.to_string()))?;
    let record = record.ok_or_else(|| ApiError::not_found_message("this Oracle has no record of that peer"))?;
    Ok(Json(PeerTrust { peer_id: peer.to_string(), standing: state.trust.standing_of(&record, None) }))
}

#[utoipa::path(
    get,
    path = "/api/trust/tickets",
    tag = "shard",
    params(TicketQuery),
    responses(
        (status = 200, description = "The peer's signed golden-ticket records", body = TicketList),
        (status = 400, description = "Not a peer id, or a bad limit", body = ErrorBody),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn tickets(
    State(state): State<Arc<AppState>>,
    query: Result<Query<TicketQuery>, QueryRejection>,
) -> Result<Json<TicketList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))?;
    let peer = parse_peer(&q.peer, "peer")?;
    let limit = q.limit.unwrap_or(100);
    if limit > MAX_TICKETS_PER_PEER {
        return Err(ApiError::invalid_param("limit", format!("at most {MAX_TICKETS_PER_PEER} records are kept per peer")));
    }
    let oracle = state.trust.oracle_peer_id().to_string();
    let signed = state.trust.store.tickets(&peer.to_bytes(), limit as usize).map_err(|e| ApiError::internal(e.to_string()))?;
    let tickets = signed
        .iter()
        .map(|s| s.verify(&oracle).map(|r| TicketView::new(s, &r)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal(format!("a stored ticket record does not verify: {e}")))?;
    Ok(Json(TicketList { oracle_peer_id: oracle, peer_id: peer.to_string(), tickets }))
}
