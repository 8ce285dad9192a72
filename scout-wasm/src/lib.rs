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

use shard_shared::sampling::{Sampler, SamplingParams};

pub use backend::{cpu_device, flex_device, Backend, BackendKind};
/// The burn device type the draft model runs on.
pub use burn_tensor::Device;
pub use model::{DraftCache, DraftConfig, DraftModel, ModelError};

/// A draft model with the cache of the sequence it last drafted for.
pub struct Drafter {
    pub model: DraftModel,
    cache: DraftCache,
    tokens: Vec<u32>,
    /// Most new tokens per forward pass (a power of two); see [`Drafter::set_max_chunk`].
    max_chunk: usize,
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
        Self { model, cache: DraftCache::default(), tokens: vec![], max_chunk: 16 }
    }

    /// Caps the tokens per forward pass. New tokens go through in power-of-two chunks up to
    /// this, because a GPU backend compiles kernels per shape: a few shapes compile once. On a
    /// software GPU (SwiftShader) even those compiles recur as the context grows, and one
    /// token at a time (1) is the only steady shape.
    pub fn set_max_chunk(&mut self, n: usize) {
        self.max_chunk = n.max(1);
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
        // New tokens in power-of-two chunks (see `set_max_chunk`).
        let mut rest = &context[reuse..];
        let mut logits = None;
        while !rest.is_empty() {
            let n = [16, 8, 4, 2, 1].into_iter().find(|&n| n <= rest.len() && n <= self.max_chunk).expect("1 fits");
            logits = Some(self.model.forward(&rest[..n], &mut self.cache).narrow(0, n - 1, 1));
            self.tokens.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        let logits = logits.expect("at least one new token");
        let data = logits.into_data_async().await.map_err(|e| DraftError::Readback(format!("{e:?}")))?;
        data.try_into_vec::<f32>().map_err(|e| DraftError::Readback(format!("{e:?}")))
    }

    /// Runs every chunk shape once and forgets the result, so that a GPU compiles its kernels
    /// before the first real job (on a software GPU that takes seconds, more than a job may).
    pub async fn warm_up(&mut self) -> Result<(), DraftError> {
        let n_vocab = self.model.config.n_vocab as u32;
        let context: Vec<u32> = (0..31u32).map(|i| (i * 7 + 1) % n_vocab).collect();
        if self.model.config.n_ctx > context.len() + 2 {
            self.propose(&context, 2, &SamplingParams::greedy(), 0).await?;
        }
        self.cache.truncate(0);
        self.tokens.clear();
        Ok(())
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
            let x = if greedy { dist.argmax() } else { sampler.draw_replayable(&dist) };
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
