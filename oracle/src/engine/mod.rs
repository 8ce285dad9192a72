//! The inference engine: a BitNet model, its tokenizer and chat template, and the kernel that
//! runs it. [`generate`] holds the decoding loop the API drives.

pub mod batch;
pub mod config;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod sequence;

/// The kernels live in their own crate (`kernels/`), so they cross-build and test quickly.
pub use shard_kernels as kernels;

use std::path::Path;

use shard_shared::chat::{ChatTemplate, FALLBACK_TEMPLATE};
use shard_shared::gguf::Gguf;
use shard_shared::tokenizer::Tokenizer;

pub use kernels::ActScales;
use kernels::TernaryKernel;
pub use model::WeightMemory;
use model::{BitNetModel, LoadError};

/// Everything needed to turn text into text.
pub struct Engine {
    pub model: BitNetModel,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    pub kernel: &'static dyn TernaryKernel,
    /// The name clients use in the `model` field.
    pub model_id: String,
    /// Context length this server allows: `--ctx-size`, or the model's training context. Like
    /// llama.cpp, a longer context than the training one is allowed (with a warning at start).
    pub n_ctx: usize,
    /// Every forward pass takes at least this long (`--min-step-ms`; zero: off). It lets the
    /// tiny default target stand in for a large one, whose step costs tens of milliseconds,
    /// in demos and tests of Scouts: a draft only helps a target slower than the drafter.
    pub min_step: std::time::Duration,
    /// What each token of a pass past the first adds to `min_step` (`--min-step-token-ms`),
    /// so that a paced target's verification of k drafted tokens costs what a big model's
    /// would, instead of nothing.
    pub min_step_per_token: std::time::Duration,
    /// [`Engine::pass_timings`], measured on first use.
    pass_timings: std::sync::OnceLock<Vec<(usize, f64)>>,
}

/// Knobs for loading.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub kernel: &'static dyn TernaryKernel,
    /// 0 takes the model's training context.
    pub n_ctx: usize,
    /// Overrides the model id (default: the file name without `.gguf`).
    pub alias: Option<String>,
    /// Overrides the architecture's FFN activation (`--ffn-activation`; llama.cpp has no
    /// such switch, so this leaves its logits behind).
    pub activation: Option<config::Activation>,
    /// How the output layer multiplies (`--head`).
    pub head: Head,
    /// How activations are scaled to int8 before a ternary product (`--act-scales`).
    pub act_scales: ActScales,
    /// Where the weights live (`--mmap` keeps them in the file's pages).
    pub weights: WeightMemory,
}

impl LoadOptions {
    /// The defaults: the model's own context and activation, the file name as its id, the
    /// exact output layer.
    pub fn new(kernel: &'static dyn TernaryKernel) -> Self {
        Self {
            kernel,
            n_ctx: 0,
            alias: None,
            activation: None,
            head: Head::Exact,
            act_scales: ActScales::Block,
            weights: WeightMemory::default(),
        }
    }
}

/// The output layer's product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Head {
    /// As stored (F16 times F16-rounded activations, as llama.cpp multiplies it).
    #[default]
    Exact,
    /// An int8 copy made at load, one scale per row: half the bytes of F16 read per token,
    /// logits a little off (`docs/performance.md`).
    Int8,
    /// Exact greedy tokens at about the int8 copy's read: for rows that feed only an argmax
    /// (greedy, no logprobs, bias or penalties), an int8 copy made at load rules out every
    /// token that provably cannot be the largest, and the rest are multiplied as stored.
    /// Other rows take the exact layer. Costs the int8 copy's memory beside the layer.
    Screened,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] shard_shared::tokenizer::TokenizerError),
    #[error("chat template: {0}")]
    Template(#[from] shard_shared::chat::ChatTemplateError),
    #[error("a context of {0} tokens is too short to decode (at least 2)")]
    Context(usize),
}

impl Engine {
    /// Loads a GGUF model. `progress(done, total)` reports bytes of tensors processed.
    pub fn load(path: &Path, opts: &LoadOptions, mut progress: impl FnMut(u64, u64)) -> Result<Self, EngineError> {
        let map = model::map_file(path, opts.weights)?;
        let g = Gguf::parse(&map).map_err(LoadError::from)?;
        let total = g.total_tensor_bytes();
        let mut done = 0;
        let mut model = BitNetModel::from_gguf(&g, &map, opts.activation, |bytes| {
            done += bytes;
            progress(done.min(total), total);
        })?;
        match opts.head {
            Head::Exact => {}
            Head::Int8 => model.use_int8_head(),
            Head::Screened => model.use_screened_head(),
        }
        model.act_scales = opts.act_scales;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.piece(i)).map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default()
        };
        let template_src = g.get_str("tokenizer.chat_template").unwrap_or(FALLBACK_TEMPLATE);
        let chat_template = ChatTemplate::new(template_src, &token_text(tokenizer.bos()), &token_text(tokenizer.eos()))?;
        let n_ctx = if opts.n_ctx == 0 { model.config.n_ctx_train } else { opts.n_ctx };
        if n_ctx < 2 {
            return Err(EngineError::Context(n_ctx));
        }
        for key in &model.config.ignored {
            tracing::warn!(key, arch = %model.config.arch, "metadata key ignored, as llama.cpp ignores it for this architecture");
        }
        if let Some(a) = opts.activation {
            tracing::warn!(activation = ?a, "--ffn-activation overrides the architecture's FFN activation: logits will differ from llama.cpp's");
        }
        let model_id = opts.alias.clone().unwrap_or_else(|| {
            path.file_name().map(|f| f.to_string_lossy().trim_end_matches(".gguf").to_string()).unwrap_or_else(|| "model".into())
        });
        progress(total, total);
        Ok(Self {
            model,
            tokenizer,
            chat_template,
            kernel: opts.kernel,
            model_id,
            n_ctx,
            min_step: std::time::Duration::ZERO,
            min_step_per_token: std::time::Duration::ZERO,
            pass_timings: std::sync::OnceLock::new(),
        })
    }

    /// Holds a forward pass of `tokens` tokens begun at `started` to the paced minimum
    /// (`min_step` plus `min_step_per_token` for each token past the first); off when both
    /// are zero.
    pub fn hold_pass(&self, started: std::time::Instant, tokens: usize) {
        let min = self.min_step + self.min_step_per_token * tokens.saturating_sub(1) as u32;
        if let Some(rest) = min.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }

    /// `(tokens, ms)` of forward passes of 1, 5 and 9 new tokens after a short context, three
    /// rounds, pacing included: what a pass costs against its size before any request has
    /// been served, so that the first drafts are priced by this machine and not by a guess.
    /// Measured once, on the first call (a second or so on a 2B model), after the pacing has
    /// been set.
    pub fn pass_timings(&self) -> &[(usize, f64)] {
        self.pass_timings.get_or_init(|| {
            let n_ctx = self.n_ctx.min(64);
            let mut cache = self.model.new_cache(n_ctx);
            let n_vocab = self.model.config.n_vocab as u32;
            let context: Vec<u32> = (0..8.min(n_ctx.saturating_sub(9)) as u32).map(|i| (i + 1) % n_vocab).collect();
            if !context.is_empty() {
                self.model.forward(self.kernel, &context, &mut cache, model::Logits::Last);
            }
            let mut timings = Vec::new();
            for _ in 0..3 {
                for size in [1usize, 5, 9].into_iter().filter(|&s| context.len() + s <= n_ctx) {
                    let tokens: Vec<u32> = (0..size as u32).map(|i| (i + 2) % n_vocab).collect();
                    let t = std::time::Instant::now();
                    self.model.forward(self.kernel, &tokens, &mut cache, model::Logits::All);
                    self.hold_pass(t, size);
                    timings.push((size, t.elapsed().as_secs_f64() * 1e3));
                    cache.truncate(context.len());
                }
            }
            timings
        })
    }

    /// Median time of a plain one-token decoding step after a short context, the baseline
    /// the speculative speed-up is measured against.
    pub fn time_single_step(&self) -> std::time::Duration {
        let mut cache = self.model.new_cache(self.n_ctx.min(64));
        let context: Vec<u32> = (0..16.min(self.n_ctx as u32 - 2)).map(|i| i % self.model.config.n_vocab as u32).collect();
        self.model.forward(self.kernel, &context, &mut cache, model::Logits::Last);
        let mut times: Vec<_> = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                self.model.forward(self.kernel, &[1], &mut cache, model::Logits::Last);
                cache.truncate(context.len());
                self.hold_pass(t, 1);
                t.elapsed()
            })
            .collect();
        times.sort();
        times[2]
    }
}
