//! Bounds on what one request may make the Oracle do, checked before it reaches the queue.
//!
//! A public Oracle answers anonymous clients, so nothing a request asks for may cost more than
//! a known multiple of the model's context:
//!
//! * **Text.** Every token covers at most a few times the longest piece in the vocabulary, so
//!   a text longer than `n_ctx` times that cannot fit the context: it is refused before it is
//!   tokenized ([`Limits::max_text_bytes`]), as `/tokenize` input and as prompt.
//! * **CPU before the queue.** Tokenizing and rendering chat templates run on blocking
//!   threads, a few at a time ([`Limits::blocking`]), never on the async threads that answer
//!   `/health` and stream tokens.
//! * **Amplification.** One request's runs (prompts × `n`) may cost at most
//!   [`Limits::max_request_tokens`] prompt and new tokens together, and its response at most
//!   [`Limits::max_response_entries`] logprob entries. The error names the budget.
//! * **Concurrency per client.** A client (its proven identity, else its address) may have at
//!   most [`Limits::max_per_client`] generation requests queued or running ([`ClientSlot`]);
//!   operator keys are not limited.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::queue::ClientKey;
use crate::trust::Caller;

/// Most messages in one chat request (each is rendered by the template).
pub const MAX_MESSAGES: usize = 1024;
/// How long a request waits for a blocking thread before it is told the server is busy.
const BLOCKING_WAIT: Duration = Duration::from_secs(10);

pub struct Limits {
    /// Longest text, in bytes, that can still fit the context.
    pub max_text_bytes: usize,
    /// Prompt plus new tokens that one request may cost over all its runs.
    pub max_request_tokens: usize,
    /// Logprob entries (each token, or each alternative reported) one response may carry.
    pub max_response_entries: usize,
    /// Generation requests one client may have queued or running at once.
    pub max_per_client: usize,
    blocking: Semaphore,
    per_client: Mutex<HashMap<Identity, usize>>,
    /// Keys client addresses with a per-process secret, so a [`ClientKey`] says nothing.
    hasher: std::hash::RandomState,
}

impl Limits {
    /// Bounds for a model with context `n_ctx` whose longest vocabulary piece has
    /// `longest_piece` bytes.
    pub fn new(n_ctx: usize, longest_piece: usize, max_request_tokens: usize, max_per_client: usize) -> Self {
        // Normalizers can shrink text a little (ligatures, NFKC) before pieces are matched, so
        // allow twice the piece length per token; a bound, not an estimate.
        let per_token = 2 * longest_piece.max(4);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            max_text_bytes: n_ctx.saturating_mul(per_token),
            max_request_tokens,
            max_response_entries: 1 << 18,
            max_per_client,
            blocking: Semaphore::new(threads.max(1)),
            per_client: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Refuses a text that cannot fit the context, before any work is spent on it.
    pub fn check_text(&self, param: &str, len: usize, n_ctx: usize) -> Result<(), ApiError> {
        if len > self.max_text_bytes {
            return Err(ApiError {
                param: Some(param.to_string()),
                ..ApiError::context_exceeded(format!(
                    "This model's maximum context length is {n_ctx} tokens; a text of {len} bytes cannot fit it \
                     (at most {} bytes are accepted, so no work is spent on it)",
                    self.max_text_bytes
                ))
            });
        }
        Ok(())
    }

    /// Runs CPU-bound request work (tokenizing, rendering) on a blocking thread, a few at a
    /// time; a request that waits too long for one gets 503.
    pub async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let _permit = tokio::time::timeout(BLOCKING_WAIT, self.blocking.acquire())
            .await
            .map_err(|_| ApiError::busy("The server is busy preparing other requests; try again shortly"))?
            .map_err(|_| ApiError::internal("the server is shutting down"))?;
        tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))
    }

    /// Checks a request's whole cost: `runs` runs (prompts × `n`) that come to `tokens` prompt
    /// and new tokens at most, and a response of `entries` logprob entries at most.
    pub fn check_budget(&self, runs: usize, tokens: usize, entries: usize) -> Result<(), ApiError> {
        if tokens > self.max_request_tokens {
            return Err(ApiError::invalid(format!(
                "This request exceeds the request budget: its {runs} runs (prompts × n) come to {tokens} prompt and \
                 generated tokens, and at most {} are allowed per request; lower n, max_tokens or the number of \
                 prompts",
                self.max_request_tokens
            )));
        }
        if entries > self.max_response_entries {
            return Err(ApiError::invalid(format!(
                "This request exceeds the response budget: it asks for {entries} logprob entries, and at most {} are \
                 allowed per response; lower logprobs, echo or max_tokens",
                self.max_response_entries
            )));
        }
        Ok(())
    }

    /// The cost of `runs` runs of a `prompt`-token prompt with up to `max_tokens` new tokens
    /// each (the context caps them), reporting `logprobs` alternatives per generated token and,
    /// with `echo`, per prompt token: (tokens, logprob entries).
    pub fn cost(
        runs: usize,
        prompt: usize,
        max_tokens: usize,
        n_ctx: usize,
        logprobs: Option<usize>,
        echo: bool,
    ) -> (usize, usize) {
        let new = max_tokens.min(n_ctx.saturating_sub(prompt));
        let tokens = runs.saturating_mul(prompt + new);
        let entries = match logprobs {
            None => 0,
            Some(k) => runs.saturating_mul(if echo { prompt + new } else { new }).saturating_mul(k + 1),
        };
        (tokens, entries)
    }

    /// Takes one of `client`'s generation slots, released when the returned guard drops.
    pub fn admit(self: &Arc<Self>, client: &Client) -> Result<ClientSlot, ApiError> {
        let id = client.identity();
        if matches!(id, Identity::Key(_) | Identity::Unknown) {
            return Ok(ClientSlot { limits: self.clone(), id: None });
        }
        let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(id.clone()).or_insert(0);
        if *n >= self.max_per_client {
            return Err(ApiError::too_many_requests(
                format!("This client already has {} requests queued or running; wait for one to finish", *n),
                1,
            ));
        }
        *n += 1;
        Ok(ClientSlot { limits: self.clone(), id: Some(id) })
    }

    /// The cache key for a client's requests: a keyed hash of who it is.
    pub fn client_key(&self, client: &Client) -> ClientKey {
        match client.identity() {
            Identity::Unknown => ClientKey(0),
            id => ClientKey(self.hasher.hash_one(id) | 1),
        }
    }
}

/// One of a client's generation slots; dropping it frees the slot.
pub struct ClientSlot {
    limits: Arc<Limits>,
    id: Option<Identity>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            let mut map = self.limits.per_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(id);
                }
            }
        }
    }
}

/// Who a client is, for limits and cache reuse: the strongest thing it proved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Key(String),
    Peer(libp2p::PeerId),
    Ip(IpAddr),
    Unknown,
}

/// Who sent a request: what it proved ([`Caller`], put in the request by the auth layer) and
/// the peer address of its connection. (`X-Forwarded-For` and the like are never read: a
/// client sets them for itself.)
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub caller: Caller,
    /// The request asked that Scouts not read it (`x-shard-private: true`).
    pub private: bool,
}

impl Client {
    pub fn identity(&self) -> Identity {
        match (&self.caller.key_name, &self.caller.peer, self.ip) {
            (Some(k), _, _) => Identity::Key(k.clone()),
            (None, Some(p), _) => Identity::Peer(*p),
            (None, None, Some(ip)) => Identity::Ip(ip),
            _ => Identity::Unknown,
        }
    }

    /// An anonymous client at `ip` (for tests).
    pub fn at(ip: IpAddr) -> Self {
        Self { ip: Some(ip), caller: Caller::anonymous(), private: false }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let private = parts
            .headers
            .get("x-shard-private")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        Ok(Client {
            ip: parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()),
            caller: parts.extensions.get::<Caller>().cloned().unwrap_or_else(Caller::anonymous),
            private,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_freed_on_drop() {
        let limits = Arc::new(Limits::new(512, 16, 8192, 2));
        let a = Client::at("10.0.0.1".parse().unwrap());
        let b = Client::at("10.0.0.2".parse().unwrap());
        let s1 = limits.admit(&a).unwrap();
        let _s2 = limits.admit(&a).unwrap();
        assert!(limits.admit(&a).is_err(), "a third request of one client is refused");
        assert!(limits.admit(&b).is_ok(), "another client is not affected");
        drop(s1);
        assert!(limits.admit(&a).is_ok(), "a finished request frees its slot");
    }

    #[test]
    fn budgets_name_themselves() {
        let limits = Limits::new(512, 16, 8192, 2);
        let (tokens, entries) = Limits::cost(16, 10, 500, 512, None, false);
        assert!(limits.check_budget(16, tokens, entries).is_ok());
        let (tokens, entries) = Limits::cost(256, 10, usize::MAX, 512, Some(20), true);
        let e = limits.check_budget(256, tokens, entries).unwrap_err();
        assert!(e.message.contains("request budget"), "{}", e.message);
        let big = Limits::new(4096, 16, 65536, 2);
        let (tokens, entries) = Limits::cost(16, 100, 3900, 4096, Some(20), true);
        let e = big.check_budget(16, tokens, entries).unwrap_err();
        assert!(e.message.contains("response budget"), "{}", e.message);
        assert!(limits.check_text("prompt", 512 * 32 + 1, 512).is_err());
        assert!(limits.check_text("prompt", 512 * 32, 512).is_ok());
    }
}
