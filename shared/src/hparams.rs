//! Transformer hyperparameters from GGUF metadata, read the way llama.cpp reads them.
//!
//! Shard's rule is that the same file gives the same logits as llama.cpp. So the keys read
//! here are the ones llama.cpp's loader reads for the architectures Shard runs
//! (`llama_model_base::load_hparams` and each arch's `load_arch_hparams`), with llama.cpp's
//! defaults, and no others:
//!
//! * A key llama.cpp ignores is ignored here too, whatever it says: `{arch}.hidden_act`
//!   (llama.cpp's `bitnet` graph is always SiLU-gated), `{arch}.vocab_size` beside a real
//!   vocabulary (the vocabulary's length wins), `{arch}.logit_scale` and the like.
//!   [`Hparams::ignored`] lists the ones present, so the loader can say so.
//! * A key llama.cpp honours is honoured: per-layer arrays, `rope.scaling.*` (linear and YaRN
//!   position scaling, the attention factor), `rope.dimension_count`.
//! * A key whose meaning this engine cannot reproduce (per-layer shapes that differ, a head
//!   size apart from `n_embd / n_head`, non-causal attention) is refused with a clear error,
//!   never run differently.

use crate::gguf::{Gguf, Value};

/// What the graph needs to know, whatever the architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope: Rope,
    /// Keys present in the file that llama.cpp does not read for this architecture, but which
    /// a reader might expect to matter (see [`IGNORED_KEYS`]).
    pub ignored: Vec<String>,
}

/// Rotary position embedding as ggml's `rope_ext` computes it: angle `pos · freq_scale ·
/// base^(-2i/n_rot)` for pair `i`, blended with the unscaled angle by YaRN's ramp, and cos/sin
/// multiplied by `mscale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// Rotated dimensions per head (the rest pass through).
    pub n_rot: usize,
    pub freq_base: f32,
    /// Positions are multiplied by this: 1 / `rope.scaling.factor` (1 when unscaled).
    pub freq_scale: f32,
    /// YaRN's blend of interpolated and extrapolated angles; 0 for plain linear scaling.
    pub ext_factor: f32,
    /// YaRN's ramp over pair indices: pairs below `corr_dims[0]` keep the unscaled angle,
    /// pairs above `corr_dims[1]` the scaled one.
    pub corr_dims: [f32; 2],
    /// Multiplies cos and sin: `rope.scaling.attn_factor`, times YaRN's magnitude correction.
    pub mscale: f32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HparamsError {
    #[error("GGUF metadata lacks {0}")]
    Missing(String),
    #[error("inconsistent hyperparameters: {0}")]
    Invalid(String),
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Keys that some converters write and llama.cpp's BitNet and llama graphs never read. Their
/// presence is reported (a file that says `hidden_act = relu2` is run SiLU-gated, as llama.cpp
/// runs it), not acted on.
pub const IGNORED_KEYS: &[&str] = &[
    "hidden_act",
    "hidden_activation",
    "vocab_size",
    "logit_scale",
    "embedding_scale",
    "residual_scale",
    "attention.scale",
    "attention.clamp_kqv",
    "attention.layer_norm_epsilon",
    "rope.scaling.finetuned",
    "tie_word_embeddings",
];

// YaRN's defaults in llama.cpp (`llama_hparams`), which llama-cpp-python passes unchanged.
const YARN_BETA_FAST: f32 = 32.0;
const YARN_BETA_SLOW: f32 = 1.0;

/// Largest shapes accepted, far above any real model: they bound what a hostile file can make
/// the loader allocate before tensor sizes are checked.
const MAX_LAYERS: usize = 512;
const MAX_EMBD: usize = 1 << 16;
const MAX_FF: usize = 1 << 18;
const MAX_VOCAB: usize = 1 << 22;

impl Hparams {
    /// Reads `{arch}.*` keys for `arch` (the caller has checked that it runs that arch).
    pub fn from_gguf(g: &Gguf<'_>, arch: &str) -> Result<Self, HparamsError> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_layer = required(g, &key("block_count"))?;
        if n_layer == 0 || n_layer > MAX_LAYERS {
            return Err(HparamsError::Invalid(format!("{n_layer} layers (1 to {MAX_LAYERS} are accepted)")));
        }
        let n_embd = required(g, &key("embedding_length"))?;
        let n_ctx_train = required(g, &key("context_length"))?;
        // llama.cpp takes a scalar or one value per layer.
        let n_ff = per_layer(g, &key("feed_forward_length"), n_layer)?.ok_or_else(|| missing(&key("feed_forward_length")))?;
        let n_head = per_layer(g, &key("attention.head_count"), n_layer)?.ok_or_else(|| missing(&key("attention.head_count")))?;
        let n_head_kv = per_layer(g, &key("attention.head_count_kv"), n_layer)?.unwrap_or(n_head);
        // The vocabulary's own length, as llama.cpp's vocab loader counts it; `vocab_size` is
        // read only by tokenizer-less files, which Shard cannot serve anyway.
        let n_vocab = match g.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(tokens) => tokens.len(),
            None => return Err(missing("tokenizer.ggml.tokens")),
        };
        if n_head == 0 || n_head_kv == 0 || n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(HparamsError::Invalid(format!("{n_embd} embedding dims, {n_head} heads, {n_head_kv} KV heads")));
        }
        if n_embd > MAX_EMBD || n_ff == 0 || n_ff > MAX_FF || n_vocab == 0 || n_vocab > MAX_VOCAB {
            return Err(HparamsError::Invalid(format!("{n_embd} dims, {n_ff} ff, {n_vocab} vocab")));
        }
        if n_ctx_train < 2 {
            return Err(HparamsError::Invalid(format!(
                "{} is {n_ctx_train}; a model needs a context of at least 2",
                key("context_length")
            )));
        }
        let head_dim = n_embd / n_head;
        for k in ["attention.key_length", "attention.value_length"] {
            if let Some(len) = g.get_u64(&key(k)) {
                if len as usize != head_dim {
                    return Err(HparamsError::Unsupported(format!(
                        "{} = {len}: heads of a size other than embedding_length / head_count ({head_dim})",
                        key(k)
                    )));
                }
            }
        }
        if g.get(&key("attention.causal")).and_then(Value::as_bool) == Some(false) {
            return Err(HparamsError::Unsupported(format!("{} = false: an encoder, not a generator", key("attention.causal"))));
        }
        let rms_eps = g
            .get_f64(&key("attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| missing(&key("attention.layer_norm_rms_epsilon")))? as f32;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(HparamsError::Invalid(format!("RMS epsilon {rms_eps}")));
        }
        let rope = Rope::from_gguf(g, arch, head_dim, n_ctx_train)?;
        let ignored = IGNORED_KEYS.iter().map(|k| key(k)).filter(|k| g.get(k).is_some()).collect();
        Ok(Self {
            arch: arch.to_string(),
            n_vocab,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_ctx_train,
            rms_eps,
            rope,
            ignored,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

impl Rope {
    fn from_gguf(g: &Gguf<'_>, arch: &str, head_dim: usize, n_ctx_train: usize) -> Result<Self, HparamsError> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_rot = g.get_u64(&key("rope.dimension_count")).map_or(head_dim, |v| v as usize);
        // llama.cpp's `llama` arch insists on full rotation; partial rotation is fine elsewhere.
        if n_rot > head_dim || n_rot % 2 != 0 || n_rot == 0 || (arch == "llama" && n_rot != head_dim) {
            return Err(HparamsError::Invalid(format!("rope dimension {n_rot} for head size {head_dim}")));
        }
        let freq_base = g.get_f64(&key("rope.freq_base")).map_or(10_000.0, |v| v as f32);
        let scaling = g.get_str(&key("rope.scaling.type")).unwrap_or("linear");
        let yarn = match scaling {
            "linear" | "longrope" => false, // longrope without its factor tensors is linear
            "none" => false,
            "yarn" => true,
            other => {
                return Err(HparamsError::Invalid(format!(
                    "{} = {other:?} (none, linear, yarn and longrope are known)",
                    key("rope.scaling.type")
                )))
            }
        };
        // `rope.scaling.factor`, or the older `rope.scale_linear`; 0 means unscaled.
        let factor =
            g.get_f64(&key("rope.scaling.factor")).or_else(|| g.get_f64(&key("rope.scale_linear"))).unwrap_or(0.0) as f32;
        let attn_factor = g.get_f64(&key("rope.scaling.attn_factor")).map_or(1.0, |v| v as f32);
        let finite = |v: f32, what: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(HparamsError::Invalid(format!("{what} {v}")))
            }
        };
        finite(freq_base, "rope frequency base")?;
        finite(factor, "rope scaling factor")?;
        finite(attn_factor, "rope attention factor")?;
        if freq_base <= 1.0 {
            return Err(HparamsError::Invalid(format!("rope frequency base {freq_base}")));
        }
        let mut freq_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
        if scaling == "none" {
            freq_scale = 1.0;
        }
        let ext_factor = if yarn { 1.0 } else { 0.0 };
        let mut mscale = attn_factor;
        let mut corr_dims = [0.0, 0.0];
        if yarn {
            // llama_context's YaRN set-up: the attention factor is divided by the magnitude
            // correction that ggml's kernel multiplies back in, then ggml applies
            // `1 + 0.1 ln(1 / freq_scale)`; both are mirrored here to round alike.
            let f = 1.0 / freq_scale;
            let get_mscale = |scale: f32| if scale <= 1.0 { 1.0 } else { 0.1 * scale.ln() + 1.0 };
            let context_factor = get_mscale(f) * (1.0 / (1.0 + 0.1 * f.ln()));
            mscale = context_factor * attn_factor * (1.0 + 0.1 * (1.0 / freq_scale).ln());
            let n_ctx_orig = g.get_u64(&key("rope.scaling.original_context_length")).map_or(n_ctx_train, |v| v as usize);
            let corr_dim = |beta: f32| {
                n_rot as f32 * (n_ctx_orig as f32 / (beta * 2.0 * std::f32::consts::PI)).ln() / (2.0 * freq_base.ln())
            };
            corr_dims = [corr_dim(YARN_BETA_FAST).floor().max(0.0), corr_dim(YARN_BETA_SLOW).ceil().min(n_rot as f32 - 1.0)];
        }
        Ok(Self { n_rot, freq_base, freq_scale, ext_factor, corr_dims, mscale })
    }

    /// An unscaled RoPE over `n_rot` dimensions (for tests and simple configs).
    pub fn plain(n_rot: usize, freq_base: f32) -> Self {
        Self { n_rot, freq_base, freq_scale: 1.0, ext_factor: 0.0, corr_dims: [0.0, 0.0], mscale: 1.0 }
    }

    /// `(cos, sin)` of each of the `n_rot / 2` pairs at position `pos`, into `out`, computed
    /// as ggml's rope cache does (the angle advanced by a running product, in f32).
    pub fn cos_sin(&self, pos: usize, out: &mut Vec<(f32, f32)>) {
        out.clear();
        let theta_scale = self.freq_base.powf(-2.0 / self.n_rot as f32);
        let mut theta_extrap = pos as f32;
        for i in 0..self.n_rot / 2 {
            let theta_interp = self.freq_scale * theta_extrap;
            let mut theta = theta_interp;
            if self.ext_factor != 0.0 {
                let y = (i as f32 - self.corr_dims[0]) / (self.corr_dims[1] - self.corr_dims[0]).max(0.001);
                let ramp_mix = (1.0 - y.clamp(0.0, 1.0)) * self.ext_factor;
                theta = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            }
            let (sin, cos) = theta.sin_cos();
            out.push((cos * self.mscale, sin * self.mscale));
            theta_extrap *= theta_scale;
        }
    }
}

fn missing(key: &str) -> HparamsError {
    HparamsError::Missing(key.to_string())
}

fn required(g: &Gguf<'_>, key: &str) -> Result<usize, HparamsError> {
    g.get_u64(key).map(|v| v as usize).ok_or_else(|| missing(key))
}

/// A scalar, or an array with one value per layer (llama.cpp's `get_key_or_arr`). This engine
/// runs uniform layers, so the values must agree.
fn per_layer(g: &Gguf<'_>, key: &str, n_layer: usize) -> Result<Option<usize>, HparamsError> {
    let Some(value) = g.get(key) else { return Ok(None) };
    if let Some(v) = value.as_u64() {
        return Ok(Some(v as usize));
    }
    let Some(array) = value.as_array() else {
        return Err(HparamsError::Invalid(format!("{key} is neither a number nor an array")));
    };
    let values: Vec<u64> = array
        .to_i64s()
        .and_then(|v| v.into_iter().map(|x| u64::try_from(x).ok()).collect::<Option<_>>())
        .ok_or_else(|| HparamsError::Invalid(format!("{key} holds a value that is not a non-negative integer")))?;
    if values.len() != n_layer {
        return Err(HparamsError::Invalid(format!("{key} has {} entries for {n_layer} layers", values.len())));
    }
    match values.split_first() {
        Some((first, rest)) if rest.iter().all(|v| v == first) => Ok(Some(*first as usize)),
        _ => Err(HparamsError::Unsupported(format!("{key} differs between layers ({values:?})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_rope_matches_the_closed_form() {
        let rope = Rope::plain(8, 10_000.0);
        let mut cs = Vec::new();
        rope.cos_sin(5, &mut cs);
        for (i, (c, s)) in cs.iter().enumerate() {
            let theta = 5.0f64 * 10_000f64.powf(-2.0 * i as f64 / 8.0);
            assert!((*c as f64 - theta.cos()).abs() < 1e-5 && (*s as f64 - theta.sin()).abs() < 1e-5);
        }
    }

    #[test]
    fn yarn_keeps_low_pairs_and_scales_high_ones() {
        let rope =
            Rope { n_rot: 64, freq_base: 10_000.0, freq_scale: 0.25, ext_factor: 1.0, corr_dims: [8.0, 20.0], mscale: 1.0 };
        let plain = Rope { freq_scale: 1.0, ext_factor: 0.0, ..rope.clone() };
        let linear = Rope { ext_factor: 0.0, ..rope.clone() };
        let (mut y, mut p, mut l) = (Vec::new(), Vec::new(), Vec::new());
        rope.cos_sin(100, &mut y);
        plain.cos_sin(100, &mut p);
        linear.cos_sin(100, &mut l);
        assert_eq!(y[3], p[3], "below the ramp: the unscaled angle");
        assert_eq!(y[25], l[25], "above the ramp: the interpolated angle");
        assert!(y[14] != p[14] && y[14] != l[14], "inside the ramp: a blend");
    }
}
