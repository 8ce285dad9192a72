//! The draft model: a llama-architecture transformer on burn.
//!
//! One definition runs on every burn device: WebGPU (burn's wgpu backend) in browsers, the
//! ndarray CPU backend in wasm where WebGPU is missing, and the flex CPU backend in the native
//! Scout (ndarray stays the reference the conformance tests run on). Weights come
//! from a GGUF file and are dequantized to f32 at load (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
//!
//! ```text
//! h = x + W_o · attention(rope(W_q·n), rope(W_k·n), W_v·n),   n = rmsnorm_attn(x)
//! y = h + W_down · (silu(W_gate·m) * W_up·m),                 m = rmsnorm_ffn(h)
//! ```
//! RoPE rotates adjacent pairs (llama.cpp's `llama` arch), and attention is grouped-query.
//!
//! Activations stay f32. (llama.cpp's CPU kernels round them to int8 blocks before a quantized
//! matmul; on SmolLM2 Q4_1 that rounding makes llama.cpp's own logits move by up to 0.65 between
//! a batched and a token-by-token pass, and by up to 0.54 between its AVX-512 and AVX2 builds,
//! so there is nothing stable to imitate. See `tests/tests/draft_model.rs`.)

use burn_tensor::activation::{silu, softmax};
use burn_tensor::{Bool, Device, Int, Tensor, TensorData};
use shard_shared::dequant;
use shard_shared::gguf::Gguf;
use shard_shared::hparams::{Hparams, HparamsError, Rope};

#[derive(Debug, Clone, PartialEq)]
pub struct DraftConfig {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f32,
    pub rope: Rope,
    pub n_ctx: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid GGUF: {0}")]
    Gguf(#[from] shard_shared::gguf::GgufError),
    #[error("the draft model must be arch `llama`, not {0:?}")]
    Arch(String),
    #[error(transparent)]
    Hparams(#[from] HparamsError),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
}

impl DraftConfig {
    /// The keys llama.cpp's `llama` arch reads, as it reads them ([`shard_shared::hparams`]).
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, ModelError> {
        let arch = g.architecture().unwrap_or_default();
        if arch != "llama" {
            return Err(ModelError::Arch(arch.to_string()));
        }
        let h = Hparams::from_gguf(g, arch)?;
        Ok(Self {
            n_vocab: h.n_vocab,
            n_embd: h.n_embd,
            n_layer: h.n_layer,
            n_head: h.n_head,
            n_head_kv: h.n_head_kv,
            head_dim: h.head_dim,
            n_ff: h.n_ff,
            rms_eps: h.rms_eps,
            rope: h.rope,
            n_ctx: h.n_ctx_train,
        })
    }
}

struct Layer {
    attn_norm: Tensor<2>,
    wq: Tensor<2>,
    wk: Tensor<2>,
    wv: Tensor<2>,
    wo: Tensor<2>,
    ffn_norm: Tensor<2>,
    w_gate: Tensor<2>,
    w_up: Tensor<2>,
    w_down: Tensor<2>,
}

/// Keys and values of one sequence, per layer: `[n_head_kv, positions, head_dim]`.
#[derive(Default)]
pub struct DraftCache {
    keys: Vec<Tensor<3>>,
    values: Vec<Tensor<3>>,
    len: usize,
}

impl DraftCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        if len == 0 {
            self.keys.clear();
            self.values.clear();
        }
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.clone().narrow(1, 0, len);
        }
        self.len = len;
    }
}

pub struct DraftModel {
    pub config: DraftConfig,
    device: Device,
    embedding: Tensor<2>,
    /// `[n_vocab, n_embd]`: the output layer, or the embedding itself when tied.
    output: Tensor<2>,
    norm: Tensor<2>,
    layers: Vec<Layer>,
}

impl DraftModel {
    /// Loads a `llama` GGUF onto `device`.
    pub fn from_gguf(bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        let g = Gguf::parse(bytes)?;
        let c = DraftConfig::from_gguf(&g)?;
        // A `rows x cols` matrix (GGUF dims `[cols, rows]`), or a vector as one row, as f32.
        let values = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>, ModelError> {
            let t = g.tensor(name).ok_or_else(|| ModelError::Tensor { name: name.into(), reason: "missing".into() })?;
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            if dims != [cols, rows] && !(rows == 1 && dims == [cols]) {
                return Err(ModelError::Tensor {
                    name: name.into(),
                    reason: format!("dims {dims:?}, expected [{cols}, {rows}]"),
                });
            }
            dequant::to_f32(t.ty, g.tensor_data(t), rows * cols)
                .map_err(|e| ModelError::Tensor { name: name.into(), reason: e.to_string() })
        };
        let load = |name: &str, rows: usize, cols: usize| -> Result<Tensor<2>, ModelError> {
            Ok(Tensor::<2>::from_data(TensorData::new(values(name, rows, cols)?, [rows, cols]), device))
        };
        // Linear weights are stored `[out, in]`. They are transposed once here, into contiguous
        // `[in, out]` for `x · W`: a transposed view would be copied on every matmul.
        let linear = |name: &str, out: usize, inp: usize| -> Result<Tensor<2>, ModelError> {
            let w = values(name, out, inp)?;
            let mut t = vec![0f32; w.len()];
            for (o, row) in w.chunks_exact(inp).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    t[i * out + o] = v;
                }
            }
            Ok(Tensor::<2>::from_data(TensorData::new(t, [inp, out]), device))
        };
        let (e, kv, f) = (c.n_embd, c.n_head_kv * c.head_dim, c.n_ff);
        let embedding = load("token_embd.weight", c.n_vocab, e)?;
        // Kept `[n_vocab, n_embd]` (tied: the embedding itself, not a second copy); logits are
        // `(W · hᵀ)ᵀ`, which copies the small `h` rather than the large `W`.
        let output = match g.tensor("output.weight") {
            Some(_) => load("output.weight", c.n_vocab, e)?,
            None => embedding.clone(),
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let p = |s: &str| format!("blk.{il}.{s}.weight");
            layers.push(Layer {
                attn_norm: load(&p("attn_norm"), 1, e)?,
                wq: linear(&p("attn_q"), e, e)?,
                wk: linear(&p("attn_k"), kv, e)?,
                wv: linear(&p("attn_v"), kv, e)?,
                wo: linear(&p("attn_output"), e, e)?,
                ffn_norm: load(&p("ffn_norm"), 1, e)?,
                w_gate: linear(&p("ffn_gate"), f, e)?,
                w_up: linear(&p("ffn_up"), f, e)?,
                w_down: linear(&p("ffn_down"), e, f)?,
            });
        }
        let norm = load("output_norm.weight", 1, e)?;
        Ok(Self { config: c, device: device.clone(), embedding, output, norm, layers })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `tokens` at positions `cache.len()..` and returns `[tokens.len(), n_vocab]` logits.
    pub fn forward(&self, tokens: &[u32], cache: &mut DraftCache) -> Tensor<2> {
        let c = &self.config;
        let (n, start, hd) = (tokens.len(), cache.len, c.head_dim);
        assert!(n > 0 && tokens.iter().all(|&t| (t as usize) < c.n_vocab), "tokens outside the vocabulary");
        let ids =
            Tensor::<1, Int>::from_data(TensorData::new(tokens.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n]), &self.device);
        let mut x = self.embedding.clone().select(0, ids);
        let (cos, sin) = self.rope_tables(start, n);
        let total = start + n;
        // Query i (position start + i) sees keys 0..=start + i.
        let mask = Tensor::<2, Bool>::from_data(
            TensorData::new((0..n * total).map(|idx| idx % total > start + idx / total).collect::<Vec<bool>>(), [n, total]),
            &self.device,
        )
        .unsqueeze::<3>();
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.n_head / c.n_head_kv;
        for (il, l) in self.layers.iter().enumerate() {
            let h = self.rms_norm(x.clone(), &l.attn_norm);
            let q = self.rope(h.clone().matmul(l.wq.clone()).reshape([n, c.n_head, hd]).swap_dims(0, 1), &cos, &sin);
            let k = self.rope(h.clone().matmul(l.wk.clone()).reshape([n, c.n_head_kv, hd]).swap_dims(0, 1), &cos, &sin);
            let v = h.matmul(l.wv.clone()).reshape([n, c.n_head_kv, hd]).swap_dims(0, 1);
            let (k, v) = if start == 0 || cache.keys.len() <= il {
                (k, v)
            } else {
                (Tensor::cat(vec![cache.keys[il].clone(), k], 1), Tensor::cat(vec![cache.values[il].clone(), v], 1))
            };
            if cache.keys.len() <= il {
                cache.keys.push(k.clone());
                cache.values.push(v.clone());
            } else {
                cache.keys[il] = k.clone();
                cache.values[il] = v.clone();
            }
            // Each KV head serves `group` query heads.
            let expand = |t: Tensor<3>| t.unsqueeze_dim::<4>(1).repeat_dim(1, group).reshape([c.n_head, total, hd]);
            let scores = q
                .matmul(expand(k).swap_dims(1, 2))
                .mul_scalar(scale)
                .mask_fill(mask.clone().repeat_dim(0, c.n_head), f32::NEG_INFINITY);
            let attn = softmax(scores, 2).matmul(expand(v)).swap_dims(0, 1).reshape([n, c.n_embd]);
            x = x + attn.matmul(l.wo.clone());
            let m = self.rms_norm(x.clone(), &l.ffn_norm);
            let gated = silu(m.clone().matmul(l.w_gate.clone())) * m.matmul(l.w_up.clone());
            x = x + gated.matmul(l.w_down.clone());
        }
        cache.len = total;
        self.output.clone().matmul(self.rms_norm(x, &self.norm).transpose()).transpose()
    }

    fn rms_norm(&self, x: Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
        let inv = x.clone().powi_scalar(2).mean_dim(1).add_scalar(self.config.rms_eps).sqrt().recip();
        x * inv * w.clone()
    }

    /// cos and sin of every (position, pair) angle, `[1, n, head_dim / 2, 1]`.
    fn rope_tables(&self, start: usize, n: usize) -> (Tensor<4>, Tensor<4>) {
        let half = self.config.head_dim / 2;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        let mut angles = Vec::with_capacity(half);
        for p in start..start + n {
            // The `llama` arch rotates the whole head (the loader checks n_rot == head_dim).
            self.config.rope.cos_sin(p, &mut angles);
            for &(c, s) in &angles {
                cos.push(c);
                sin.push(s);
            }
        }
        let t = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, n, half, 1]), &self.device);
        (t(cos), t(sin))
    }

    /// Rotates adjacent pairs (2i, 2i + 1) of `[heads, n, head_dim]`.
    fn rope(&self, x: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        let [h, n, hd] = x.dims();
        let pairs = x.reshape([h, n, hd / 2, 2]);
        let a = pairs.clone().narrow(3, 0, 1);
        let b = pairs.narrow(3, 1, 1);
        let ra = a.clone() * cos.clone() - b.clone() * sin.clone();
        let rb = a * sin.clone() + b * cos.clone();
        Tensor::cat(vec![ra, rb], 3).reshape([h, n, hd])
    }
}
