//! The BitNet b1.58 transformer: weights from a GGUF file and the forward pass.
//!
//! Per layer (llama.cpp's `bitnet` graph; microsoft's `bitnet-b1.58` differs only in the
//! activation):
//!
//! ```text
//! h = x + W_o · subnorm_attn(attention(rope(W_q·n), rope(W_k·n), W_v·n)),  n = norm_attn(x)
//! y = h + W_down · subnorm_ffn(act(W_gate·m) * (W_up·m)),                  m = norm_ffn(h)
//! ```
//!
//! Every `W` is ternary and multiplies int8-quantized activations. The forward pass takes any
//! number of new tokens at once: prompts, single decode steps and k-token verification all
//! share it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use shard_shared::gguf::{GgmlType, Gguf, TensorInfo};

use super::batch::{RowMap, Segment};
use super::config::{Activation, BitNetConfig, ConfigError};
use super::kernels::dense::{DenseMatrix, DenseType};
use super::kernels::int8_rows::Int8Rows;
use super::kernels::screen::{ArgmaxScreen, ScreenStats};
use super::kernels::{
    self, ActScales, MatrixError, QuantizedActivations, TernaryFormat, TernaryKernel, TernaryMatrix, WeightBytes,
};
use super::kv_cache::{KvCache, KvPool};
use super::ops::{self, rms_norm, round_f16};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid GGUF file: {0}")]
    Gguf(#[from] shard_shared::gguf::GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
}

/// A linear layer: ternary as BitNet intends, or float where a file stores it so.
#[derive(Debug, Clone)]
pub enum Linear {
    Ternary(TernaryMatrix),
    Dense { m: DenseMatrix, scale: f32 },
}

impl Linear {
    pub fn is_ternary(&self) -> bool {
        matches!(self, Linear::Ternary(_))
    }

    /// Bytes of weights one pass reads.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Linear::Ternary(t) => t.format().row_bytes(t.cols()) * t.rows(),
            Linear::Dense { m, .. } => m.dtype().size() * m.rows() * m.cols(),
        }
    }

    /// `out = W · x` for `n` tokens; `xq` is `x` quantized (used by ternary weights).
    fn forward(&self, kernel: &dyn TernaryKernel, x: &[f32], xq: &QuantizedActivations, n: usize, out: &mut [f32]) {
        match self {
            Linear::Ternary(t) => t.matmul(kernel, xq, out),
            Linear::Dense { m, scale } => {
                if m.dtype() == DenseType::F16 {
                    // llama.cpp multiplies F16 weights by F16-rounded activations.
                    let x16: Vec<f32> = x.iter().map(|&v| round_f16(v)).collect();
                    m.matmul(&x16, n, out);
                } else {
                    m.matmul(x, n, out);
                }
                if *scale != 1.0 {
                    out.iter_mut().for_each(|v| *v *= scale);
                }
            }
        }
    }
}

/// `outs[i] = lins[i] · x` for layers of the same input, in one parallel pass when they are
/// all ternary ([`kernels::matmul_group`]).
fn forward_group(
    kernel: &dyn TernaryKernel,
    lins: &[&Linear],
    x: &[f32],
    xq: &QuantizedActivations,
    n: usize,
    outs: &mut [&mut [f32]],
) {
    let ternary: Option<Vec<&TernaryMatrix>> =
        lins.iter().map(|l| if let Linear::Ternary(t) = l { Some(t) } else { None }).collect();
    match ternary {
        Some(mats) => kernels::matmul_group(kernel, &mats, xq, outs),
        None => lins.iter().zip(outs.iter_mut()).for_each(|(l, out)| l.forward(kernel, x, xq, n, out)),
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub attn_sub_norm: Option<Vec<f32>>,
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    pub ffn_gate: Linear,
    pub ffn_up: Linear,
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub ffn_down: Linear,
}

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

/// What a segment's logit rows feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowUse {
    /// Anything (sampling, logprobs, penalties): every logit is the output layer's.
    #[default]
    Full,
    /// Only an argmax: greedy decoding or verification with no logprobs, bias or penalties.
    /// A screened output layer ([`ScreenedHead`]) leaves the logits that cannot be the
    /// largest at −∞; the argmax, ties included, is the exact layer's.
    Argmax,
}

/// The output layer's int8 screen (`--head screened`) and what it has done so far.
#[derive(Debug)]
pub struct ScreenedHead {
    pub screen: ArgmaxScreen,
    /// Totals over every screened pass, for the benchmarks.
    pub stats: Mutex<ScreenStats>,
}

#[derive(Debug, Clone)]
pub struct BitNetModel {
    pub config: BitNetConfig,
    pub tok_embd: DenseMatrix,
    /// `None` when the output layer is tied to the token embedding.
    pub output: Option<DenseMatrix>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
    /// The output layer as int8 rows, when chosen (`--head int8`): used in its place.
    pub head_int8: Option<Int8Rows>,
    /// An int8 screen of the output layer, when chosen (`--head screened`): used for rows that
    /// feed only an argmax ([`RowUse::Argmax`]).
    pub head_screen: Option<Arc<ScreenedHead>>,
    /// How activations are scaled to int8 for the ternary products (`--act-scales`): per 256
    /// values as llama.cpp (the default), or per token as BitNet b1.58 was trained.
    pub act_scales: ActScales,
}

/// Reads tensors from a parsed file, sharing the memory map.
struct TensorSource<'a, 'g> {
    g: &'a Gguf<'g>,
    map: &'a Arc<memmap2::Mmap>,
}

impl TensorSource<'_, '_> {
    fn info(&self, name: &str) -> Result<&TensorInfo, LoadError> {
        self.g.tensor(name).ok_or_else(|| LoadError::MissingTensor(name.to_string()))
    }

    fn bytes(&self, t: &TensorInfo) -> WeightBytes {
        let start = (self.g.data_offset + t.offset) as usize;
        WeightBytes::Mapped(self.map.clone(), start..start + t.size as usize)
    }

    fn err(name: &str, reason: impl Into<String>) -> LoadError {
        LoadError::Tensor { name: name.to_string(), reason: reason.into() }
    }

    fn expect_dims(t: &TensorInfo, dims: &[usize]) -> Result<(), LoadError> {
        let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        if got != dims {
            return Err(Self::err(&t.name, format!("has shape {got:?}, expected {dims:?}")));
        }
        Ok(())
    }

    /// A 1-D float vector such as a norm weight.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
        let t = self.info(name)?;
        Self::expect_dims(t, &[len])?;
        let m = self.dense_matrix(t, 1, len)?;
        let mut out = vec![0f32; len];
        m.row_into(0, &mut out);
        Ok(out)
    }

    fn dense_matrix(&self, t: &TensorInfo, rows: usize, cols: usize) -> Result<DenseMatrix, LoadError> {
        let dtype = match t.ty {
            GgmlType::F32 => DenseType::F32,
            GgmlType::F16 => DenseType::F16,
            GgmlType::BF16 => DenseType::BF16,
            other => return Err(Self::err(&t.name, format!("type {other} is not supported here (F32, F16, BF16 are)"))),
        };
        DenseMatrix::new(dtype, rows, cols, self.bytes(t)).map_err(|MatrixError(e)| Self::err(&t.name, e))
    }

    /// A linear layer of `rows` outputs and `cols` inputs, with its optional `.scale`.
    fn linear(&self, prefix: &str, rows: usize, cols: usize) -> Result<Linear, LoadError> {
        let name = format!("{prefix}.weight");
        let t = self.info(&name)?;
        Self::expect_dims(t, &[cols, rows])?;
        let scale = match self.g.tensor(&format!("{prefix}.scale")) {
            Some(s) => {
                let v = self.vector(&s.name, 1)?[0];
                if !v.is_finite() {
                    return Err(Self::err(&s.name, "is not finite"));
                }
                v
            }
            None => 1.0,
        };
        let ternary = match t.ty {
            GgmlType::TQ2_0 => Some(TernaryFormat::TQ2_0),
            GgmlType::TQ1_0 => Some(TernaryFormat::TQ1_0),
            GgmlType::I2_S => Some(TernaryFormat::I2S),
            _ => None,
        };
        match ternary {
            Some(format) => {
                let m = TernaryMatrix::new(format, rows, cols, self.bytes(t)).map_err(|MatrixError(e)| Self::err(&name, e))?;
                Ok(Linear::Ternary(m.with_scale(scale)))
            }
            None => Ok(Linear::Dense { m: self.dense_matrix(t, rows, cols)?, scale }),
        }
    }
}

impl BitNetModel {
    /// Builds the model from a parsed file whose bytes are `map`; `activation` overrides the
    /// architecture's FFN activation.
    pub fn from_gguf(
        g: &Gguf<'_>,
        map: &Arc<memmap2::Mmap>,
        activation: Option<Activation>,
        mut progress: impl FnMut(u64),
    ) -> Result<Self, LoadError> {
        let config = BitNetConfig::from_gguf(g, activation)?;
        let src = TensorSource { g, map };
        let c = &config;
        let (e, f, kv) = (c.n_embd, c.n_ff, c.kv_dim());
        let embd_info = src.info("token_embd.weight")?;
        TensorSource::expect_dims(embd_info, &[e, c.n_vocab])?;
        let tok_embd = src.dense_matrix(embd_info, c.n_vocab, e)?;
        progress(embd_info.size);
        let output = match g.tensor("output.weight") {
            Some(t) if !c.separate_output => {
                return Err(TensorSource::err(
                    &t.name,
                    format!(
                        "arch {} ties the output layer to token_embd (llama.cpp refuses a file with this extra \
                         tensor); a separate output layer is arch bitnet-b1.58",
                        c.arch
                    ),
                ))
            }
            Some(t) => {
                TensorSource::expect_dims(t, &[e, c.n_vocab])?;
                progress(t.size);
                Some(src.dense_matrix(t, c.n_vocab, e)?)
            }
            None => None,
        };
        let output_norm = src.vector("output_norm.weight", e)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let p = |s: &str| format!("blk.{il}.{s}");
            let layer = Layer {
                attn_norm: src.vector(&p("attn_norm.weight"), e)?,
                wq: src.linear(&p("attn_q"), e, e)?,
                wk: src.linear(&p("attn_k"), kv, e)?,
                wv: src.linear(&p("attn_v"), kv, e)?,
                attn_sub_norm: if c.sub_norms { Some(src.vector(&p("attn_sub_norm.weight"), e)?) } else { None },
                wo: src.linear(&p("attn_output"), e, e)?,
                ffn_norm: src.vector(&p("ffn_norm.weight"), e)?,
                ffn_gate: src.linear(&p("ffn_gate"), f, e)?,
                ffn_up: src.linear(&p("ffn_up"), f, e)?,
                ffn_sub_norm: if c.sub_norms { Some(src.vector(&p("ffn_sub_norm.weight"), f)?) } else { None },
                ffn_down: src.linear(&p("ffn_down"), e, f)?,
            };
            // Touch every page now, so the first request does not pay for page faults.
            let layer_bytes: u64 = g
                .tensors
                .iter()
                .filter(|t| t.name.starts_with(&format!("blk.{il}.")))
                .map(|t| {
                    let b = src.bytes(t);
                    let mut x = 0u8;
                    for i in (0..b.len()).step_by(4096) {
                        x ^= b[i];
                    }
                    std::hint::black_box(x);
                    t.size
                })
                .sum();
            progress(layer_bytes);
            layers.push(layer);
        }
        Ok(Self {
            config,
            tok_embd,
            output,
            output_norm,
            layers,
            head_int8: None,
            head_screen: None,
            act_scales: ActScales::Block,
        })
    }

    /// Bytes of weights a forward pass reads from memory, whatever its number of tokens:
    /// every layer's matrices and norms and the output layer (a token's embedding row aside).
    /// Decoding cannot go faster than memory delivers these.
    pub fn weight_bytes_per_pass(&self) -> usize {
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        let norms = |v: &[f32]| std::mem::size_of_val(v);
        self.layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down].iter().map(|m| m.weight_bytes()).sum::<usize>()
                    + norms(&l.attn_norm)
                    + norms(&l.ffn_norm)
                    + l.attn_sub_norm.as_deref().map_or(0, norms)
                    + l.ffn_sub_norm.as_deref().map_or(0, norms)
            })
            .sum::<usize>()
            + match (&self.head_int8, &self.head_screen) {
                (Some(q), _) => q.weight_bytes(),
                // A greedy step reads the screen, and the few rows it cannot rule out.
                (None, Some(s)) => s.screen.weight_bytes(),
                (None, None) => head.dtype().size() * head.rows() * head.cols(),
            }
            + norms(&self.output_norm)
    }

    /// Multiplies the output layer through an int8 copy from now on (see [`Int8Rows`]).
    pub fn use_int8_head(&mut self) {
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        self.head_int8 = Some(Int8Rows::from_dense(head));
    }

    /// Screens the output layer through an int8 copy for greedy rows from now on (see
    /// [`ArgmaxScreen`]).
    pub fn use_screened_head(&mut self) {
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        self.head_screen = Some(Arc::new(ScreenedHead { screen: ArgmaxScreen::from_dense(head), stats: Mutex::default() }));
    }

    /// A fresh cache for up to `capacity` positions, with a pool of its own.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.config.n_layer, self.config.kv_dim(), self.config.head_dim, capacity)
    }

    /// A pool of KV pages for this model's shape, holding at most `cap_positions` positions
    /// over all the caches that share it.
    pub fn kv_pool(&self, cap_positions: Option<usize>) -> Arc<KvPool> {
        KvPool::new(self.config.n_layer, self.config.kv_dim(), self.config.head_dim, cap_positions)
    }

    /// Runs `tokens` at positions `cache.len()..` and returns logits: one row of `n_vocab`
    /// for the last token, or one per token.
    pub fn forward(&self, kernel: &dyn TernaryKernel, tokens: &[u32], cache: &mut KvCache, want: Logits) -> Vec<f32> {
        self.forward_for(kernel, tokens, cache, want, RowUse::Full)
    }

    /// [`BitNetModel::forward`] for rows that feed `rows_feed`.
    pub fn forward_for(
        &self,
        kernel: &dyn TernaryKernel,
        tokens: &[u32],
        cache: &mut KvCache,
        want: Logits,
        rows_feed: RowUse,
    ) -> Vec<f32> {
        let mut seg = [Segment { tokens, cache, want, rows: rows_feed }];
        self.forward_batch(kernel, &mut seg).pop().expect("one segment gives one result")
    }

    /// Runs the new tokens of every segment in one pass (each weight matrix is read once for
    /// all of them) and returns each segment's logits, as [`BitNetModel::forward`] would.
    ///
    /// The pass runs on a thread of the kernels' pool (inline when the caller is one): its
    /// hundred-odd parallel sections a token then fork from a worker that takes its own share
    /// and steals the rest, instead of each waking a caller that sleeps outside the pool
    /// (`docs/performance.md`: kernel-mode time in a decoding profile 13% → 10%).
    pub fn forward_batch(&self, kernel: &dyn TernaryKernel, segments: &mut [Segment<'_>]) -> Vec<Vec<f32>> {
        rayon::scope(|_| self.forward_batch_here(kernel, segments))
    }

    /// [`BitNetModel::forward_batch`] on the calling thread.
    fn forward_batch_here(&self, kernel: &dyn TernaryKernel, segments: &mut [Segment<'_>]) -> Vec<Vec<f32>> {
        let c = &self.config;
        let map = RowMap::new(segments);
        let n = map.rows.len();
        let (e, f, kv) = (c.n_embd, c.n_ff, c.kv_dim());
        let starts: Vec<usize> = segments.iter().map(|s| s.cache.len()).collect();
        for s in segments.iter() {
            assert!(
                !s.tokens.is_empty() && s.cache.len() + s.tokens.len() <= s.cache.capacity(),
                "forward pass past the context"
            );
        }
        let mut x = vec![0f32; n * e];
        for (t, &(s, i)) in map.rows.iter().enumerate() {
            let tok = segments[s].tokens[i];
            assert!((tok as usize) < c.n_vocab, "token {tok} outside the vocabulary");
            self.tok_embd.row_into(tok as usize, &mut x[t * e..(t + 1) * e]);
        }
        let mut norm = vec![0f32; n * e];
        let mut q = vec![0f32; n * e];
        let mut k = vec![0f32; n * kv];
        let mut v = vec![0f32; n * kv];
        let mut attn = vec![0f32; n * e];
        let mut proj = vec![0f32; n * e];
        let mut gate = vec![0f32; n * f];
        let mut up = vec![0f32; n * f];
        let mut xq = QuantizedActivations::default();

        let mut sub = vec![0f32; n * f];
        // Activations are quantized only for layers whose weights are ternary.
        let quantize = |xq: &mut QuantizedActivations, lins: &[&Linear], x: &[f32], cols: usize| {
            if lins.iter().any(|l| l.is_ternary()) {
                xq.requantize_with(x, n, cols, self.act_scales);
            }
        };
        for (il, l) in self.layers.iter().enumerate() {
            rms_norm(&x, &l.attn_norm, c.rms_eps, &mut norm);
            quantize(&mut xq, &[&l.wq, &l.wk, &l.wv], &norm, e);
            forward_group(kernel, &[&l.wq, &l.wk, &l.wv], &norm, &xq, n, &mut [&mut q, &mut k, &mut v]);
            for (s, seg) in segments.iter_mut().enumerate() {
                let (off, len, start) = (map.offsets[s], seg.tokens.len(), starts[s]);
                ops::rope(c, &mut q[off * e..(off + len) * e], c.n_head, start);
                ops::rope(c, &mut k[off * kv..(off + len) * kv], c.n_head_kv, start);
                seg.cache.store(il, start, &k[off * kv..(off + len) * kv], &v[off * kv..(off + len) * kv]);
            }
            let caches: Vec<&KvCache> = segments.iter().map(|s| &*s.cache).collect();
            ops::attention(c, &q, &caches, &starts, &map, il, &mut attn);
            let attn_in = match &l.attn_sub_norm {
                Some(w) => {
                    rms_norm(&attn, w, c.rms_eps, &mut norm);
                    &norm
                }
                None => &attn,
            };
            quantize(&mut xq, &[&l.wo], attn_in, e);
            l.wo.forward(kernel, attn_in, &xq, n, &mut proj);
            ops::add_assign(&mut x, &proj);

            rms_norm(&x, &l.ffn_norm, c.rms_eps, &mut norm);
            quantize(&mut xq, &[&l.ffn_gate, &l.ffn_up], &norm, e);
            forward_group(kernel, &[&l.ffn_gate, &l.ffn_up], &norm, &xq, n, &mut [&mut gate, &mut up]);
            ops::gated(c.activation, &mut gate, &up);
            let down_in = match &l.ffn_sub_norm {
                Some(w) => {
                    rms_norm(&gate, w, c.rms_eps, &mut sub);
                    &sub
                }
                None => &gate,
            };
            quantize(&mut xq, &[&l.ffn_down], down_in, f);
            l.ffn_down.forward(kernel, down_in, &xq, n, &mut proj);
            ops::add_assign(&mut x, &proj);
        }
        for (seg, &start) in segments.iter_mut().zip(&starts) {
            seg.cache.set_len(start + seg.tokens.len());
        }

        let rows = map.wanted(segments);
        let mut h = vec![0f32; rows.len() * e];
        for (i, &t) in rows.iter().enumerate() {
            rms_norm(&x[t * e..(t + 1) * e], &self.output_norm, c.rms_eps, &mut h[i * e..(i + 1) * e]);
        }
        let mut logits = vec![0f32; rows.len() * c.n_vocab];
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        if let Some(q) = &self.head_int8 {
            q.matmul(&h, rows.len(), &mut logits);
        } else {
            if head.dtype() == DenseType::F16 {
                // llama.cpp multiplies F16 weights by F16-rounded activations.
                h.iter_mut().for_each(|v| *v = round_f16(*v));
            }
            match &self.head_screen {
                Some(s) if segments.iter().any(|seg| seg.rows == RowUse::Argmax) => {
                    let argmax: Vec<bool> = segments
                        .iter()
                        .flat_map(|seg| std::iter::repeat_n(seg.rows == RowUse::Argmax, seg.logit_rows()))
                        .collect();
                    self.screened_head(head, s, &h, &argmax, &mut logits)
                }
                _ => head.matmul(&h, rows.len(), &mut logits),
            }
        }
        let mut rest = logits.as_slice();
        segments
            .iter()
            .map(|seg| {
                let (mine, after) = rest.split_at(seg.logit_rows() * c.n_vocab);
                rest = after;
                mine.to_vec()
            })
            .collect()
    }

    /// The output layer over rows `h` (one per wanted row), screened where `argmax[i]` and
    /// exact elsewhere.
    fn screened_head(&self, head: &DenseMatrix, s: &ScreenedHead, h: &[f32], argmax: &[bool], logits: &mut [f32]) {
        let (e, v) = (head.cols(), head.rows());
        let record = |stats: ScreenStats| {
            let mut total = s.stats.lock().unwrap_or_else(|e| e.into_inner());
            *total = *total + stats;
        };
        if argmax.iter().all(|&a| a) {
            record(s.screen.argmax_logits(head, h, argmax.len(), logits));
            return;
        }
        let gather = |pick: bool| -> (Vec<usize>, Vec<f32>) {
            let idx: Vec<usize> = (0..argmax.len()).filter(|&i| argmax[i] == pick).collect();
            let x = idx.iter().flat_map(|&i| h[i * e..(i + 1) * e].iter().copied()).collect();
            (idx, x)
        };
        let (screened, x) = gather(true);
        let mut out = vec![0f32; screened.len() * v];
        record(s.screen.argmax_logits(head, &x, screened.len(), &mut out));
        for (k, &i) in screened.iter().enumerate() {
            logits[i * v..(i + 1) * v].copy_from_slice(&out[k * v..(k + 1) * v]);
        }
        let (exact, x) = gather(false);
        if !exact.is_empty() {
            let mut out = vec![0f32; exact.len() * v];
            head.matmul(&x, exact.len(), &mut out);
            for (k, &i) in exact.iter().enumerate() {
                logits[i * v..(i + 1) * v].copy_from_slice(&out[k * v..(k + 1) * v]);
            }
        }
    }
}

/// Opens a GGUF file: memory-mapped, or copied from the map into memory of its own backed by
/// 2 MiB pages ([`WeightMemory`]).
pub fn map_file(path: &Path, memory: WeightMemory) -> Result<Arc<memmap2::Mmap>, LoadError> {
    let io = |source| LoadError::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; a file changed underneath us while mapped is the
    // operator's error, as with llama.cpp's mmap loading.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    if memory == WeightMemory::Mapped || map.is_empty() {
        return Ok(Arc::new(map));
    }
    let mut own = memmap2::MmapMut::map_anon(map.len()).map_err(io)?;
    // Asked before the first write, so that the pages are 2 MiB ones from the start; where
    // the kernel has no transparent huge pages the copy still works, in 4 KiB pages.
    #[cfg(target_os = "linux")]
    let _ = own.advise(memmap2::Advice::HugePage);
    own.copy_from_slice(&map);
    Ok(Arc::new(own.make_read_only().map_err(io)?))
}

/// Where a model's weights live while it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightMemory {
    /// The file's own pages, memory-mapped: instant to load and shared with other processes
    /// through the page cache, but in 4 KiB pages.
    Mapped,
    /// A copy made at load in anonymous memory backed by 2 MiB pages (Linux transparent huge
    /// pages): decoding streams every weight once a token, and the hardware prefetchers stop
    /// at each page boundary, so bigger pages read faster (`docs/performance.md`). It costs
    /// the copy at load (about a second a gigabyte).
    HugePages,
}

impl Default for WeightMemory {
    /// Huge pages on Linux, where transparent huge pages exist; the file's pages elsewhere.
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            WeightMemory::HugePages
        } else {
            WeightMemory::Mapped
        }
    }
}
