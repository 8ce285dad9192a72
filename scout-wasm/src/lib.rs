//! The Scout: a peer that drafts tokens for the Oracle's speculative decoder.
//!
//! * [`backend`]: where the model runs: burn's wgpu backend (WebGPU, Vulkan...) or the CPU.
//! * [`model`]: the draft model, a llama-architecture transformer on burn.
//! * [`job`]: answering a draft job (context deltas, checks, drafting).
//! * [`client`]: the libp2p client that dials the Oracle and serves its jobs.
//! * [`Drafter`]: the draft loop: keeps a KV cache in step with a sequence's context and
//!   proposes the next k tokens.

pub mod backend;
pub mod client;
pub mod job;
pub mod model;

use shard_shared::gguf::{Gguf, GgufError};
use shard_shared::sampling::{Sampler, SamplingParams};

pub use backend::{cpu_device, flex_device, Backend, BackendKind};
/// The burn device type the draft model runs on.
pub use burn_tensor::Device;
pub use model::{DraftCache, DraftConfig, DraftModel, ModelError};

/// What a Scout needs to know about a draft model before it runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftModelInfo {
    pub architecture: String,
    pub n_tensors: usize,
    pub n_vocab: usize,
}

/// Reads the header of a draft model the Scout downloaded.
pub fn inspect_draft_model(bytes: &[u8]) -> Result<DraftModelInfo, GgufError> {
    let g = Gguf::parse(bytes)?;
    let n_vocab = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0);
    Ok(DraftModelInfo { architecture: g.architecture().unwrap_or("unknown").to_string(), n_tensors: g.tensors.len(), n_vocab })
}

/// A draft model with the cache of the sequence it last drafted for.
pub struct Drafter {
    pub model: DraftModel,
    cache: DraftCache,
    tokens: Vec<u32>,
}

/// A proposal: tokens and, when sampled, the distributions they were drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    pub q: Option<Vec<shard_shared::sampling::Distribution>>,
}

/// Why a draft could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    #[error("empty context")]
    EmptyContext,
    #[error("token {0} is outside the draft model's vocabulary")]
    TokenOutOfRange(u32),
    #[error("context of {0} tokens is longer than the draft model's {1}")]
    TooLong(usize, usize),
    #[error("reading logits back from the device: {0}")]
    Readback(String),
}

impl Drafter {
    pub fn new(model: DraftModel) -> Self {
        Self { model, cache: DraftCache::default(), tokens: vec![] }
    }

    /// Logits after `context` (keeping the cached common prefix), read back to the CPU.
    /// Async because a WebGPU buffer can only be read back asynchronously.
    pub async fn logits_after(&mut self, context: &[u32]) -> Result<Vec<f32>, DraftError> {
        let c = &self.model.config;
        if context.is_empty() {
            return Err(DraftError::EmptyContext);
        }
        if let Some(&t) = context.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(DraftError::TokenOutOfRange(t));
        }
        if context.len() > c.n_ctx {
            return Err(DraftError::TooLong(context.len(), c.n_ctx));
        }
        let reuse = self.tokens.iter().zip(context).take_while(|(a, b)| a == b).count().min(context.len() - 1);
        self.cache.truncate(reuse);
        self.tokens.truncate(reuse);
        let logits = self.model.forward(&context[reuse..], &mut self.cache);
        self.tokens.extend_from_slice(&context[reuse..]);
        let n = context.len() - reuse;
        let data = logits.narrow(0, n - 1, 1).into_data_async().await.map_err(|e| DraftError::Readback(format!("{e:?}")))?;
        data.try_into_vec::<f32>().map_err(|e| DraftError::Readback(format!("{e:?}")))
    }

    /// Proposes `k` tokens after `context`: greedy, or sampled with `params` (then with q).
    pub async fn propose(
        &mut self,
        context: &[u32],
        k: usize,
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Proposal, DraftError> {
        let max_k = self.model.config.n_ctx.saturating_sub(context.len());
        let k = k.min(max_k);
        let mut logits = self.logits_after(context).await?;
        let greedy = params.is_greedy();
        let mut sampler = Sampler::new(params.clone(), seed);
        let (mut tokens, mut q) = (Vec::with_capacity(k), Vec::with_capacity(k));
        for i in 0..k {
            let dist = sampler.distribution(&logits, &[]);
            let x = if greedy { dist.argmax() } else { sampler.draw(&dist) };
            tokens.push(x);
            q.push(dist);
            if i + 1 < k {
                let mut ctx = self.tokens.clone();
                ctx.push(x);
                logits = self.logits_after(&ctx).await?;
            }
        }
        Ok(Proposal { tokens, q: (!greedy).then_some(q) })
    }
}
