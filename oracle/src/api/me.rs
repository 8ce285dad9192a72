//! `GET /api/me`: what the caller's credentials prove: its tier, its peer id and, for a
//! Scout, its credits and standing. A Scout asks with its own signed proof.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::limits::Client;
use super::openapi::{ErrorBody, Me};
use super::AppState;

#[utoipa::path(
    get,
    path = "/api/me",
    tag = "shard",
    responses(
        (status = 200, description = "What the caller's credentials prove", body = Me),
        (status = 401, description = "An invalid credential", body = ErrorBody)
    ),
    security((), ("bearer" = []))
)]
pub async fn me(State(state): State<Arc<AppState>>, client: Client) -> Json<Value> {
    let c = &client.caller;
    let r = c.record.clone().unwrap_or_default();
    let st = state.trust.standing_of(&r, None);
    Json(json!({
        "tier": c.tier,
        "peer_id": c.peer.map(|p| p.to_string()),
        "key_name": c.key_name,
        "credits": r.credits,
        "credits_earned": r.earned,
        "credits_spent": r.spent,
        "held_credits": st.held_credits,
        "reputation": c.peer.map(|_| st.reputation),
        "probation": c.peer.map(|_| st.probation),
        "tickets_passed": st.tickets_passed,
        "tickets_failed": st.tickets_failed,
        "banned_until": st.banned_until,
        "credits_per_generated_token": state.trust.config.spend_per_token,
        "credits_per_accepted_token": state.trust.config.earn_per_token,
    }))
}
