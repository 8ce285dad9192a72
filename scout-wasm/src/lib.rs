//! The Scout: a peer that drafts tokens for the Oracle's speculative decoder.
//!
//! * [`model`]: the draft model, a llama-architecture transformer on burn (WebGPU, or the CPU).
//! * [`Drafter`]: the draft loop: keeps a KV cache in step with a sequence's context and
//!   proposes the next k tokens.

pub mod model;

use burn_tensor::Device;
use shard_shared::gguf::{Gguf, GgufError};
use shard_shared::sampling::{Sampler, SamplingParams};

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

/// The CPU device (burn's ndarray backend), available on every target.
#[allow(deprecated)] // burn 0.22 marks ndarray deprecated in favour of flex; ndarray is what runs in wasm here.
pub fn cpu_device() -> Device {
    Device::ndarray()
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

impl Drafter {
    pub fn new(model: DraftModel) -> Self {
        Self { model, cache: DraftCache::default(), tokens: vec![] }
    }

    /// Logits after `context` (keeping the cached common prefix), read back to the CPU.
    pub fn logits_after(&mut self, context: &[u32]) -> Vec<f32> {
        assert!(!context.is_empty());
        let reuse = self.tokens.iter().zip(context).take_while(|(a, b)| a == b).count().min(context.len() - 1);
        self.cache.truncate(reuse);
        self.tokens.truncate(reuse);
        let logits = self.model.forward(&context[reuse..], &mut self.cache);
        self.tokens.extend_from_slice(&context[reuse..]);
        let n = context.len() - reuse;
        let last = logits.narrow(0, n - 1, 1);
        last.into_data().try_into_vec::<f32>().expect("f32 logits")
    }

    /// Proposes `k` tokens after `context`: greedy, or sampled with `params` (then with q).
    pub fn propose(&mut self, context: &[u32], k: usize, params: &SamplingParams, seed: u64) -> Proposal {
        let mut logits = self.logits_after(context);
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
                logits = self.logits_after(&ctx);
            }
        }
        Proposal { tokens, q: (!greedy).then_some(q) }
    }
}
