//! Request fields shared by the completion endpoints, their validation, and small helpers for
//! responses (ids, usage, token strings).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shard_shared::sampling::SamplingParams;

use super::error::ApiError;
use crate::engine::generate::{Finish, GenerateParams};

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields common to `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; llama.cpp's extension.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
}

pub const MAX_LOGPROBS: usize = 20;
/// Smallest positive temperature: below it, logits divided by the temperature overflow f32
/// (0 itself means greedy).
pub const MIN_TEMPERATURE: f32 = 1e-3;
/// Longest stop sequence, in bytes: the engine checks the held-back text against every stop
/// string at every token.
pub const MAX_STOP_BYTES: usize = 256;
/// Most `logit_bias` entries (OpenAI's own limit is 300 tokens).
pub const MAX_LOGIT_BIAS: usize = 1024;

impl SamplingFields {
    /// Validates the fields into generation parameters (max_tokens and logprobs are set by
    /// the caller).
    pub fn to_params(&self, n_vocab: usize) -> Result<GenerateParams, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        if temperature > 0.0 && temperature < MIN_TEMPERATURE {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid_param("top_p", format!("top_p must be in (0, 1], got {top_p}")));
        }
        let top_k = self.top_k.unwrap_or(0);
        if top_k < 0 {
            return Err(ApiError::invalid_param("top_k", "top_k must be 0 (off) or positive"));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid_param(name, format!("{name} must be between -2 and 2, got {v}")));
                }
            }
        }
        let mut logit_bias = vec![];
        let entries = self.logit_bias.as_ref().map_or(0, |m| m.len());
        if entries > MAX_LOGIT_BIAS {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("logit_bias has {entries} entries; at most {MAX_LOGIT_BIAS} are allowed"),
            ));
        }
        for (k, &v) in self.logit_bias.iter().flatten() {
            // Only the canonical spelling of an id, so that "1", "01" and "+1" cannot add up
            // three biases on one token.
            let id: u32 = k
                .parse()
                .ok()
                .filter(|id: &u32| id.to_string() == *k)
                .ok_or_else(|| ApiError::invalid_param("logit_bias", format!("logit_bias key {k:?} is not a token id")))?;
            if id as usize >= n_vocab || !(-100.0..=100.0).contains(&v) {
                return Err(ApiError::invalid_param("logit_bias", format!("logit_bias {k}: {v} is out of range")));
            }
            logit_bias.push((id, v));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid_param("stop", "at most 4 stop sequences are allowed"));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid_param(
                "stop",
                format!("a stop sequence of {} bytes is too long; at most {MAX_STOP_BYTES}", long.len()),
            ));
        }
        let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
        Ok(GenerateParams {
            max_tokens: 16,
            sampling: SamplingParams {
                temperature,
                top_k: top_k as usize,
                top_p,
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                logit_bias,
            },
            seed: self.seed.map(|s| s as u64).unwrap_or_else(random_seed),
            stop,
            logprobs: None,
            prompt_logprobs: None,
        })
    }
}

/// Checks `n` (choices per prompt).
pub fn choices_per_prompt(n: Option<i64>) -> Result<usize, ApiError> {
    match n.unwrap_or(1) {
        n @ 1..=16 => Ok(n as usize),
        n => Err(ApiError::invalid_param("n", format!("n must be between 1 and 16, got {n}"))),
    }
}

/// Checks `max_tokens`-style fields.
pub fn max_tokens(value: Option<i64>, default: usize, param: &str) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 0 => Ok(v as usize),
        Some(v) => Err(ApiError::invalid_param(param, format!("{param} must be non-negative, got {v}"))),
    }
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
    /// Shard's extra: how speculative decoding went (absent when no draft was tried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeUsage>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SpeculativeUsage {
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
    pub verifications: usize,
    pub acceptance_rate: f64,
    /// Forward passes of the target while decoding (verifications and plain steps).
    pub target_passes: usize,
    /// Generated tokens per forward pass of the target.
    pub tokens_per_target_pass: f64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn add(&mut self, f: &Finish) {
        self.prompt_tokens += f.prompt_tokens;
        self.completion_tokens += f.completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
        self.prompt_tokens_details.cached_tokens += f.cached_tokens;
        if f.spec.verifications > 0 || self.speculative.is_some() {
            let s = self.speculative.get_or_insert_with(Default::default);
            s.drafted_tokens += f.spec.drafted;
            s.accepted_tokens += f.spec.accepted;
            s.verifications += f.spec.verifications;
            s.target_passes += f.spec.target_passes;
            s.acceptance_rate = if s.drafted_tokens > 0 { s.accepted_tokens as f64 / s.drafted_tokens as f64 } else { 0.0 };
            s.tokens_per_target_pass =
                if s.target_passes > 0 { self.completion_tokens as f64 / s.target_passes as f64 } else { 0.0 };
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique response id such as `cmpl-3f2a…`.
pub fn new_id(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:016x}", std::hash::RandomState::new().hash_one(n))
}

/// A seed for requests that give none.
pub fn random_seed() -> u64 {
    std::hash::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
