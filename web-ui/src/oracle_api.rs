//! What the web app reads from the Oracle: streamed chat chunks, queue updates, the Scout
//! set-up (`/api/scout`) and the swarm (`/api/swarm`). Unknown fields are ignored, so an
//! Oracle that reports more does not break an older page.

use serde::Deserialize;
use serde_json::Value;
use shard_shared::trust::{TicketState, Tier};

/// A request's place in line (the Oracle's `: queue {...}` SSE comments).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueueStatus {
    /// The request's ticket id (random, so it cannot be guessed).
    pub ticket: String,
    pub ahead: u64,
    pub state: TicketState,
    pub est_wait_ms: u64,
    pub tier: Tier,
}

/// `GET /api/me`: what the Oracle makes of this browser's credentials.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Me {
    pub tier: Tier,
    pub peer_id: Option<String>,
    #[serde(default)]
    pub credits: i64,
    #[serde(default)]
    pub credits_earned: u64,
    #[serde(default)]
    pub credits_spent: u64,
    #[serde(default)]
    pub reputation: Option<f64>,
    #[serde(default)]
    pub probation: Option<bool>,
    #[serde(default)]
    pub held_credits: i64,
    #[serde(default)]
    pub tickets_passed: u64,
    #[serde(default)]
    pub tickets_failed: u64,
    #[serde(default)]
    pub banned_until: Option<u64>,
    #[serde(default)]
    pub credits_per_generated_token: i64,
}

impl QueueStatus {
    /// Reads a comment line's text, if it is a queue update.
    pub fn from_comment(comment: &str) -> Option<Self> {
        serde_json::from_str(comment.strip_prefix("queue ")?).ok()
    }
}

/// What one streamed chat event means for the page.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatChunk {
    /// Text to append (may be empty, as in the first chunk that names the role).
    Text(String),
    /// The answer is complete.
    Finished { reason: String },
    /// The Oracle reported an error inside the stream.
    Error(String),
    /// `[DONE]`.
    Done,
}

impl ChatChunk {
    /// Interprets a `data:` payload; `None` for one that is not JSON or not a chunk.
    pub fn parse(data: &str) -> Option<Self> {
        if data.trim() == "[DONE]" {
            return Some(ChatChunk::Done);
        }
        let v: Value = serde_json::from_str(data).ok()?;
        if let Some(err) = v.get("error") {
            return Some(ChatChunk::Error(err["message"].as_str().unwrap_or("the Oracle reported an error").to_string()));
        }
        let choice = v.get("choices")?.get(0)?;
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            return Some(ChatChunk::Finished { reason: reason.to_string() });
        }
        Some(ChatChunk::Text(choice.get("delta")?.get("content").and_then(Value::as_str).unwrap_or("").to_string()))
    }
}

/// `GET /api/scout`: the draft model and where to dial.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScoutSetup {
    pub model: ScoutModel,
    pub addrs: Addrs,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ScoutModel {
    pub id: String,
    pub url: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Addrs {
    pub peer_id: String,
    #[serde(default)]
    pub webrtc_direct: Vec<String>,
    #[serde(default)]
    pub websocket: Vec<String>,
}

/// How the browser reaches the Oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// webrtc-direct first, WebSocket if that fails.
    Auto,
    WebRtc,
    WebSocket,
}

impl TransportChoice {
    /// From the page's `?transport=` parameter.
    pub fn from_query(v: Option<&str>) -> Self {
        match v {
            Some("websocket") | Some("ws") => TransportChoice::WebSocket,
            Some("webrtc") | Some("webrtc-direct") => TransportChoice::WebRtc,
            _ => TransportChoice::Auto,
        }
    }
}

impl Addrs {
    /// The addresses to try, in order.
    pub fn dial_order(&self, choice: TransportChoice) -> Vec<String> {
        match choice {
            TransportChoice::Auto => self.webrtc_direct.iter().chain(&self.websocket).cloned().collect(),
            TransportChoice::WebRtc => self.webrtc_direct.clone(),
            TransportChoice::WebSocket => self.websocket.clone(),
        }
    }
}

/// `GET /api/swarm`, the parts the page shows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Swarm {
    pub oracle: OracleLoad,
    #[serde(default)]
    pub scouts: Vec<ScoutRow>,
    #[serde(default)]
    pub peers: Vec<PeerRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct OracleLoad {
    pub peer_id: String,
    pub model: String,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub tokens_per_s: f64,
    pub tokens_generated: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ScoutRow {
    pub peer_id: String,
    pub role: String,
    pub transport: String,
    pub backend: String,
    pub agent: String,
    pub jobs_answered: u64,
    pub tokens_drafted: u64,
    pub tokens_proposed: u64,
    pub tokens_accepted: u64,
    pub acceptance_rate: f64,
    pub latency_ms: f64,
    pub strikes: u32,
    #[serde(default)]
    pub credits: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PeerRow {
    pub peer_id: String,
    pub role: String,
    pub transport: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_queue_comments_and_chunks() {
        let q = QueueStatus::from_comment(
            r#"queue {"ticket":"9f0c2b7a11d4e3a8","ahead":2,"state":"waiting","est_wait_ms":900,"tier":"leech"}"#,
        );
        let q = q.unwrap();
        assert_eq!((q.ahead, q.state, q.tier), (2, TicketState::Waiting, Tier::Leech));
        assert_eq!(QueueStatus::from_comment("keep-alive"), None);
        assert_eq!(
            ChatChunk::parse(r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#),
            Some(ChatChunk::Text("Hi".into()))
        );
        assert_eq!(
            ChatChunk::parse(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
            Some(ChatChunk::Finished { reason: "stop".into() })
        );
        assert_eq!(
            ChatChunk::parse(r#"{"error":{"message":"boom","type":"server_error"}}"#),
            Some(ChatChunk::Error("boom".into()))
        );
        assert_eq!(ChatChunk::parse("[DONE]"), Some(ChatChunk::Done));
        assert_eq!(ChatChunk::parse("nonsense"), None);
    }

    #[test]
    fn dial_order_follows_the_choice() {
        let a = Addrs { peer_id: "p".into(), webrtc_direct: vec!["w".into()], websocket: vec!["s".into()] };
        assert_eq!(a.dial_order(TransportChoice::Auto), vec!["w", "s"]);
        assert_eq!(a.dial_order(TransportChoice::from_query(Some("websocket"))), vec!["s"]);
    }
}
