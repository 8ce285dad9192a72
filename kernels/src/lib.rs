//! Shard's ternary matrix kernels: BitNet b1.58 weights (-1, 0, +1 with a scale) times int8
//! activations.
//!
//! Three weight layouts are read as they sit in the GGUF file, without repacking: llama.cpp's
//! TQ2_0 and TQ1_0 and microsoft/BitNet's I2_S (x86 layout). See [`formats`] for the bits.
//! Activations are quantized to int8 in blocks of 256 with one f32 scale per block, exactly as
//! llama.cpp's Q8_K does (same rounding), so the integer dot products match llama.cpp's. As an
//! opt-in ([`ActScales::Token`]) they take one scale per token instead, as BitNet b1.58 was
//! trained and as bitnet.cpp runs it: a row's dot product is then one integer sum and one
//! multiply, which is what makes batched passes cheap.
//!
//! Every kernel implements [`TernaryKernel`]. [`scalar::Scalar`] is the reference; the SIMD
//! kernels (AVX2 and AVX-512 VNNI on x86-64, NEON with and without `dotprod` on aarch64, each
//! picked at run time by [`available`]) are held to it by property tests, the NEON ones under
//! qemu-aarch64 on x86 machines. The product is *batched*: a call multiplies the
//! weights by several tokens' activations at once and reads each weight byte once, which is
//! what makes verifying k drafted tokens cost little more than decoding one.
//!
//! This crate knows nothing of GGUF files, models or servers, so that it builds in seconds for
//! another architecture (as ggml keeps its quant formats apart from model graphs).

pub mod attention;
pub mod dense;
pub mod formats;
pub mod int8_rows;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
pub mod screen;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::ops::{Deref, Range};
use std::sync::Arc;

use rayon::prelude::*;

pub use formats::TernaryFormat;

/// Activation block length: one scale per this many int8 values (llama.cpp's `QK_K`).
pub const ACT_BLOCK: usize = 256;

/// How activations are scaled to int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ActScales {
    /// One scale per 256 values, as llama.cpp's Q8_K (its logits, bit for bit in the integer
    /// part).
    #[default]
    Block,
    /// One scale per token (absmax over the whole vector), as BitNet b1.58 quantizes
    /// activations in training and bitnet.cpp at inference. Where a matrix's blocks share
    /// their row's scale, the SIMD kernels then sum a whole row in integers and scale once.
    Token,
}

/// Several tokens' activations, quantized to int8 in blocks of [`ACT_BLOCK`].
///
/// The fields are private so that their lengths always agree (`n_tokens * cols` values,
/// `n_tokens * cols / ACT_BLOCK` scales and sums): the SIMD kernels read them through raw
/// pointers and rely on it.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActivations {
    n_tokens: usize,
    cols: usize,
    /// `n_tokens * cols` values, token-major.
    qs: Vec<i8>,
    /// The same values with each 256-block reordered as eight 32-value pieces
    /// `[0, 4, 1, 5, 2, 6, 3, 7]`, so that one 512-bit load meets the weights a 512-bit code
    /// vector holds (weights `32l..` and `128+32l..`).
    interleaved: Vec<i8>,
    /// One scale per block: value = q * scale.
    scales: Vec<f32>,
    /// Sum of the block's quantized values, which the kernels use to turn the stored
    /// weight codes 0, 1, 2 into -1, 0, +1 with one subtraction.
    sums: Vec<i32>,
    /// Per token, the sum over its blocks of scale × sum: that subtraction for a whole row
    /// whose weight blocks share one scale ([`TernaryMatrix::row_scales`]).
    scaled_sums: Vec<f32>,
    /// How the scales were chosen; with [`ActScales::Token`] every block of a token carries
    /// the token's one scale.
    mode: ActScales,
    /// Per token, the sum of all its quantized values (kept in [`ActScales::Token`] mode,
    /// where a whole row's integer dot product is corrected by it at once).
    totals: Vec<i32>,
    /// The first `PAIR_TOKENS * (n_tokens / PAIR_TOKENS)` tokens in groups of
    /// [`PAIR_TOKENS`] (none below [`PAIR_GROUPS_FROM`] groups, and none where no kernel of
    /// this CPU reads them): per group and block, for each pair of 4-value pieces of
    /// `interleaved`'s order, the pair of every token of the group side by side
    /// (`[group][block][pair][token][8]`).
    by_pairs: Vec<i8>,
    /// The groups' block scales, each token's twice (`[group][block][token][2]`).
    pair_scales: Vec<f32>,
}

/// Tokens in one group of [`QuantizedActivations::by_pairs`]: two 32-bit lanes each in a
/// 512-bit vector.
pub const PAIR_TOKENS: usize = 8;

/// Groups of [`PAIR_TOKENS`] from which the pairs are built (and the AVX-512 kernel takes
/// them): with one group, the kernel's row tiles measured faster.
pub const PAIR_GROUPS_FROM: usize = 2;

impl QuantizedActivations {
    /// Quantizes `x` (`n_tokens` rows of `cols`) with absmax scaling per block.
    ///
    /// As llama.cpp's `quantize_row_q8_K_ref`: the scale comes from the value of largest
    /// magnitude *with its sign*, `q = round_ties_even(x * -127 / max)` capped at 127, and the
    /// stored scale is `-max / 127`.
    pub fn quantize(x: &[f32], n_tokens: usize, cols: usize) -> Self {
        let mut q = Self::default();
        q.requantize(x, n_tokens, cols);
        q
    }

    /// Quantizes `x` with one scale per token ([`ActScales::Token`]), chosen as
    /// [`QuantizedActivations::quantize`] chooses a block's.
    pub fn quantize_per_token(x: &[f32], n_tokens: usize, cols: usize) -> Self {
        let mut q = Self::default();
        q.requantize_with(x, n_tokens, cols, ActScales::Token);
        q
    }

    /// Like [`QuantizedActivations::quantize`], reusing this buffer.
    pub fn requantize(&mut self, x: &[f32], n_tokens: usize, cols: usize) {
        self.requantize_with(x, n_tokens, cols, ActScales::Block);
    }

    /// Quantizes `x` (`n_tokens` rows of `cols`) with scales chosen per `mode`, reusing this
    /// buffer.
    pub fn requantize_with(&mut self, x: &[f32], n_tokens: usize, cols: usize, mode: ActScales) {
        assert_eq!(cols % ACT_BLOCK, 0, "activation length {cols} is not a multiple of {ACT_BLOCK}");
        assert_eq!(x.len(), n_tokens * cols);
        let n_blocks = x.len() / ACT_BLOCK;
        self.n_tokens = n_tokens;
        self.cols = cols;
        self.mode = mode;
        self.qs.resize(x.len(), 0);
        self.scales.resize(n_blocks, 0.0);
        self.sums.resize(n_blocks, 0);
        let nb = cols / ACT_BLOCK;
        self.scaled_sums.resize(n_tokens, 0.0);
        self.totals.resize(n_tokens, 0);
        self.interleaved.resize(x.len(), 0);
        if cols == 0 {
            self.scaled_sums.fill(0.0);
            self.totals.fill(0);
            self.by_pairs.clear();
            self.pair_scales.clear();
            return;
        }
        let one = |((((x, qs), interleaved), (scales, sums)), (scaled_sum, total))| {
            TokenQuant { qs, interleaved, scales, sums, scaled_sum, total }.fill(x, mode)
        };
        // Tokens are independent: a batch of them is quantized on the pool's threads.
        if n_tokens > 1 && x.len() >= PARALLEL_ELEMENTS {
            x.par_chunks_exact(cols)
                .zip(self.qs.par_chunks_exact_mut(cols))
                .zip(self.interleaved.par_chunks_exact_mut(cols))
                .zip(self.scales.par_chunks_exact_mut(nb).zip(self.sums.par_chunks_exact_mut(nb)))
                .zip(self.scaled_sums.par_iter_mut().zip(self.totals.par_iter_mut()))
                .for_each(one);
        } else {
            x.chunks_exact(cols)
                .zip(self.qs.chunks_exact_mut(cols))
                .zip(self.interleaved.chunks_exact_mut(cols))
                .zip(self.scales.chunks_exact_mut(nb).zip(self.sums.chunks_exact_mut(nb)))
                .zip(self.scaled_sums.iter_mut().zip(self.totals.iter_mut()))
                .for_each(one);
        }
        self.fill_pairs();
    }

    /// Builds [`QuantizedActivations::by_pairs`] and its scales from the tokens.
    fn fill_pairs(&mut self) {
        let (cols, nb) = (self.cols, self.cols / ACT_BLOCK);
        let groups = self.n_tokens / PAIR_TOKENS;
        // Only the AVX-512 VNNI kernel reads them: elsewhere the copy would be wasted.
        let groups = if groups >= PAIR_GROUPS_FROM && pairs_are_read() { groups } else { 0 };
        self.by_pairs.resize(groups * PAIR_TOKENS * cols, 0);
        self.pair_scales.resize(groups * nb * PAIR_TOKENS * 2, 0.0);
        let (interleaved, scales) = (&self.interleaved, &self.scales);
        let fill = |(g, (dst, dst_scales)): (usize, (&mut [i8], &mut [f32]))| {
            let t0 = g * PAIR_TOKENS;
            for (k, piece) in dst.chunks_exact_mut(8 * PAIR_TOKENS).enumerate() {
                for (t, out) in piece.chunks_exact_mut(8).enumerate() {
                    let src = (t0 + t) * cols + 8 * k;
                    out.copy_from_slice(&interleaved[src..src + 8]);
                }
            }
            for (b, out) in dst_scales.chunks_exact_mut(2 * PAIR_TOKENS).enumerate() {
                for (t, s) in out.chunks_exact_mut(2).enumerate() {
                    s.fill(scales[(t0 + t) * nb + b]);
                }
            }
        };
        if groups > 0 {
            self.by_pairs
                .par_chunks_exact_mut(PAIR_TOKENS * cols)
                .zip(self.pair_scales.par_chunks_exact_mut(nb * PAIR_TOKENS * 2))
                .enumerate()
                .for_each(fill);
        }
    }

    /// How the scales were chosen.
    pub fn mode(&self) -> ActScales {
        self.mode
    }

    /// Per token, the sum of all its quantized values.
    pub fn totals(&self) -> &[i32] {
        &self.totals
    }

    pub fn blocks_per_token(&self) -> usize {
        self.cols / ACT_BLOCK
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Values per token.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Every token's values, token-major.
    pub fn values(&self) -> &[i8] {
        &self.qs
    }

    /// Every token's values, each 256-block in the AVX-512 kernel's order (see the field).
    pub fn interleaved(&self) -> &[i8] {
        &self.interleaved
    }

    /// Every block's scale, token-major.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Every block's sum of values, token-major.
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }

    /// Per token, the sum over its blocks of scale × sum of values.
    pub fn scaled_sums(&self) -> &[f32] {
        &self.scaled_sums
    }

    /// The first `n_tokens / PAIR_TOKENS` groups of tokens, pairs of pieces side by side
    /// (see the field; empty below [`PAIR_GROUPS_FROM`] groups).
    pub fn by_pairs(&self) -> &[i8] {
        &self.by_pairs
    }

    /// The groups' block scales, each token's twice.
    pub fn pair_scales(&self) -> &[f32] {
        &self.pair_scales
    }

    /// Token `t`'s quantized values.
    pub fn token(&self, t: usize) -> &[i8] {
        &self.qs[t * self.cols..(t + 1) * self.cols]
    }

    /// Token `t`'s block scales.
    pub fn token_scales(&self, t: usize) -> &[f32] {
        let nb = self.blocks_per_token();
        &self.scales[t * nb..(t + 1) * nb]
    }

    /// Token `t`'s block sums.
    pub fn token_sums(&self, t: usize) -> &[i32] {
        let nb = self.blocks_per_token();
        &self.sums[t * nb..(t + 1) * nb]
    }
}

/// Whether a kernel on this CPU reads [`QuantizedActivations::by_pairs`]: the AVX-512 VNNI
/// one, which is selectable only where it is detected.
#[cfg(target_arch = "x86_64")]
fn pairs_are_read() -> bool {
    x86::Avx512Vnni::detected()
}

#[cfg(not(target_arch = "x86_64"))]
fn pairs_are_read() -> bool {
    false
}

/// Quantizes one span with absmax scaling, as llama.cpp's `quantize_row_q8_K_ref` does a block:
/// the scale comes from the value of largest magnitude *with its sign*,
/// `q = round_ties_even(x * -127 / max)` capped at 127. Returns the scale `-max / 127` (zero,
/// with every value zero, when the span is all zero or not finite).
fn quantize_span(x: &[f32], out: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 || !amax.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = nearest_int(iscale * v).min(127) as i8;
    }
    1.0 / iscale
}

/// Rounds to the nearest integer, ties to even, as llama.cpp's `nearest_int` (|v| < 2^22):
/// adding 1.5 * 2^23 leaves the rounded value in the mantissa's low bits.
#[inline]
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Bytes of a weight tensor: owned, or borrowed from a memory-mapped model file.
#[derive(Clone)]
pub enum WeightBytes {
    Owned(Arc<Vec<u8>>),
    Mapped(Arc<memmap2::Mmap>, Range<usize>),
}

impl Deref for WeightBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            WeightBytes::Owned(v) => v,
            WeightBytes::Mapped(m, r) => &m[r.clone()],
        }
    }
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightBytes({} bytes)", self.len())
    }
}

/// A ternary weight matrix in one of the supported layouts: `rows` outputs of `cols` inputs.
///
/// Built only by [`TernaryMatrix::new`], which checks the bytes against the layout; the fields
/// are private so that the check holds for as long as the matrix lives.
#[derive(Debug, Clone)]
pub struct TernaryMatrix {
    format: TernaryFormat,
    rows: usize,
    cols: usize,
    data: WeightBytes,
    /// Multiplies every output: I2_S's tensor scale times any `.scale` tensor.
    scale: f32,
    /// Each row's block scale, when every block of every row carries its row's one scale (as
    /// BitNet converters write them: one scale per tensor), found at load. The SIMD kernels
    /// then factor it out of the row: a block costs its integer dot products and one
    /// multiply-add by the activation scale. `None`: the blocks' scales differ, and each block
    /// is scaled by its own.
    row_scales: Option<Arc<Vec<f32>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MatrixError(pub String);

impl TernaryMatrix {
    /// Wraps raw tensor bytes, checking their length against the layout.
    pub fn new(format: TernaryFormat, rows: usize, cols: usize, data: WeightBytes) -> Result<Self, MatrixError> {
        if cols % ACT_BLOCK != 0 {
            return Err(MatrixError(format!("{format:?} row length {cols} is not a multiple of {ACT_BLOCK}")));
        }
        let need = format.tensor_bytes(rows, cols);
        if data.len() != need {
            return Err(MatrixError(format!("{format:?} {rows}x{cols} needs {need} bytes, got {}", data.len())));
        }
        let scale = match format {
            TernaryFormat::I2S => formats::i2s_tensor_scale(&data, rows * cols),
            _ => 1.0,
        };
        if !scale.is_finite() {
            return Err(MatrixError(format!("I2_S tensor scale {scale} is not finite")));
        }
        let row_scales = uniform_row_scales(format, rows, cols, &data).map(Arc::new);
        Ok(Self { format, rows, cols, data, scale, row_scales })
    }

    /// Each row's one block scale, if every row's blocks share theirs (see the field).
    pub fn row_scales(&self) -> Option<&[f32]> {
        self.row_scales.as_deref().map(Vec::as_slice)
    }

    pub fn format(&self) -> TernaryFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// What every output is multiplied by.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Multiplies the output scale by `factor` (a `.scale` tensor beside the weights).
    pub fn with_scale(mut self, factor: f32) -> Self {
        self.scale *= factor;
        self
    }

    /// The bytes of one row (I2_S rows have no per-row scale; TQ rows carry their block scales).
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let n = self.format.row_bytes(self.cols);
        &self.data[r * n..(r + 1) * n]
    }

    /// Multiplies by several tokens: `out[t * rows + r] = scale * W[r] · x_t`, split over
    /// rayon's threads by blocks of rows.
    pub fn matmul(&self, kernel: &dyn TernaryKernel, x: &QuantizedActivations, out: &mut [f32]) {
        matmul_group(kernel, &[self], x, &mut [out]);
    }
}

/// Elements of per-token work (norms, quantization) above which a batch of tokens is split
/// over the pool's threads: below it, waking a thread costs more than it saves.
pub const PARALLEL_ELEMENTS: usize = 1 << 14;

/// One token's part of [`QuantizedActivations`], filled by [`TokenQuant::fill`].
struct TokenQuant<'a> {
    qs: &'a mut [i8],
    interleaved: &'a mut [i8],
    scales: &'a mut [f32],
    sums: &'a mut [i32],
    scaled_sum: &'a mut f32,
    total: &'a mut i32,
}

impl TokenQuant<'_> {
    fn fill(self, x: &[f32], mode: ActScales) {
        let span = match mode {
            ActScales::Block => ACT_BLOCK,
            ActScales::Token => x.len(),
        };
        for (i, chunk) in x.chunks_exact(span).enumerate() {
            let d = quantize_span(chunk, &mut self.qs[i * span..(i + 1) * span]);
            let first = i * span / ACT_BLOCK;
            for b in first..first + span / ACT_BLOCK {
                self.scales[b] = d;
                self.sums[b] = self.qs[b * ACT_BLOCK..(b + 1) * ACT_BLOCK].iter().map(|&q| q as i32).sum();
            }
        }
        *self.scaled_sum = self.scales.iter().zip(self.sums.iter()).map(|(&d, &s)| d * s as f32).sum();
        *self.total = self.sums.iter().sum();
        for (src, dst) in self.qs.chunks_exact(ACT_BLOCK).zip(self.interleaved.chunks_exact_mut(ACT_BLOCK)) {
            for l in 0..4 {
                dst[64 * l..64 * l + 32].copy_from_slice(&src[32 * l..32 * l + 32]);
                dst[64 * l + 32..64 * l + 64].copy_from_slice(&src[128 + 32 * l..128 + 32 * l + 32]);
            }
        }
    }
}

/// Several matrices of the same input (a layer's Q, K and V; its FFN gate and up) times the
/// same tokens, in one parallel pass: `outs[i][t * rows_i + r] = scale_i * W_i[r] · x_t`. One
/// pass rather than one per matrix, because waking the threads and waiting for the slowest
/// costs about as much as a small matrix when decoding one token.
pub fn matmul_group(kernel: &dyn TernaryKernel, mats: &[&TernaryMatrix], x: &QuantizedActivations, outs: &mut [&mut [f32]]) {
    assert_eq!(mats.len(), outs.len(), "one output per matrix");
    let n = x.n_tokens;
    for (m, out) in mats.iter().zip(outs.iter()) {
        assert_eq!(x.cols, m.cols, "activation length does not match the matrix");
        assert_eq!(out.len(), n * m.rows, "output length does not match rows x tokens");
    }
    let total: usize = mats.iter().map(|m| m.rows).sum();
    let per_task = rows_per_task(total, mats[0].cols * n);
    let mut tasks: Vec<(&TernaryMatrix, RowBlock)> = vec![];
    for (m, out) in mats.iter().zip(outs.iter_mut()) {
        tasks.extend(RowBlock::split(out, m.rows, n, per_task).into_iter().map(|b| (*m, b)));
    }
    let run = |(m, block): (&TernaryMatrix, RowBlock)| {
        let rows = block.rows.clone();
        block.fill(m.scale, |by_row| gemm(kernel, m, rows, x, by_row));
    };
    if tasks.len() == 1 {
        if let Some(task) = tasks.pop() {
            run(task);
        }
    } else {
        // Every task its own piece of work for stealing. Rayon's default splits a list into
        // runs of two or three tasks until a thread steals, and a layer's tasks differ in size
        // (Q's rows against K's remainder), so one thread finished a run while the other had
        // most of a matrix left: a 9-token pass profiled 17,336 samples on one thread against
        // 15,488 on the other, and 18,471 against 17,989 after (`docs/performance.md`).
        tasks.into_par_iter().with_max_len(1).for_each(run);
    }
}

/// One parallel task's share of a token-major output (`out[t * rows + r]`): rows `rows`, as
/// one piece of each token's output row. Tasks own disjoint pieces, so each writes its own
/// results in place.
pub(crate) struct RowBlock<'a> {
    pub(crate) rows: Range<usize>,
    pieces: Vec<&'a mut [f32]>,
}

impl<'a> RowBlock<'a> {
    /// Cuts `out` (`n_tokens` rows of `rows` values) into blocks of `per_task` rows.
    pub(crate) fn split(out: &'a mut [f32], rows: usize, n_tokens: usize, per_task: usize) -> Vec<Self> {
        assert_eq!(out.len(), rows * n_tokens);
        if rows == 0 {
            return vec![];
        }
        let mut blocks: Vec<Self> = (0..rows)
            .step_by(per_task)
            .map(|start| RowBlock { rows: start..(start + per_task).min(rows), pieces: Vec::with_capacity(n_tokens) })
            .collect();
        for token_out in out.chunks_exact_mut(rows) {
            for (block, piece) in blocks.iter_mut().zip(token_out.chunks_mut(per_task)) {
                block.pieces.push(piece);
            }
        }
        blocks
    }

    /// Runs `product`, which writes this block's rows times every token row-major
    /// (`[r * n_tokens + t]`), and stores its results times `scale`. Products write rows ×
    /// tokens and the model reads tokens × rows: each task turns its own block around, in a
    /// buffer kept per thread, instead of one thread turning the whole output around after.
    pub(crate) fn fill(mut self, scale: f32, product: impl FnOnce(&mut [f32])) {
        if let [out] = self.pieces.as_mut_slice() {
            // One token: row-major is already the output's layout.
            product(out);
            if scale != 1.0 {
                out.iter_mut().for_each(|v| *v *= scale);
            }
            return;
        }
        thread_local!(static BY_ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) });
        BY_ROW.with_borrow_mut(|by_row| {
            let n = self.pieces.len();
            by_row.clear();
            by_row.resize(self.rows.len() * n, 0.0);
            product(by_row);
            // Sixteen rows at a time (16 × n values, in L1), each token's sixteen written side
            // by side.
            const ROWS: usize = 16;
            for (c, chunk) in by_row.chunks(ROWS * n).enumerate() {
                for (t, out) in self.pieces.iter_mut().enumerate() {
                    let dst = &mut out[c * ROWS..c * ROWS + chunk.len() / n];
                    for (v, src) in dst.iter_mut().zip(chunk[t..].iter().step_by(n)) {
                        *v = src * scale;
                    }
                }
            }
        });
    }
}

/// The scale each row's blocks share, or `None` if some row's blocks differ in scale (bit for
/// bit: a row of equal scales is scaled exactly as block by block would, up to rounding).
fn uniform_row_scales(format: TernaryFormat, rows: usize, cols: usize, data: &[u8]) -> Option<Vec<f32>> {
    let Some(at) = format.scale_offset() else { return Some(vec![1.0; rows]) }; // I2_S: no block scales
    let (row_bytes, bb, nb) = (format.row_bytes(cols), format.block_bytes(), cols / format.block_len());
    let scale_of = |row: &[u8], b: usize| [row[b * bb + at], row[b * bb + at + 1]];
    let mut out = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &data[r * row_bytes..(r + 1) * row_bytes];
        if (1..nb).any(|b| scale_of(row, b) != scale_of(row, 0)) {
            return None;
        }
        out.push(format.block_scale(row, 0));
    }
    Some(out)
}

/// Multiply-adds below which a task is not worth handing to another thread.
const MIN_TASK_WORK: usize = 1 << 19;

/// `n` tokens split into the fewest groups of at most `max`, as even as they come (9 by 8 is
/// 5 + 4, not 8 + 1): a tile of one or two tokens leaves the SIMD units waiting on one chain of
/// dependent sums. Yields each group's first token and length.
pub(crate) fn token_groups(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let groups = n.div_ceil(max);
    (0..groups).scan(0, move |t0, g| {
        let len = (n - *t0) / (groups - g);
        let first = *t0;
        *t0 += len;
        Some((first, len))
    })
}

/// How many rows each parallel task takes, for rows of `work_per_row` multiply-adds: enough
/// that a task outweighs the cost of scheduling it, and at least four tasks per thread when
/// the matrix is big (so uneven progress balances out). All rows means "run on this thread".
/// Split work comes in a multiple of the thread count: three equal tasks on two threads
/// would take two rounds.
pub fn rows_per_task(rows: usize, work_per_row: usize) -> usize {
    let threads = rayon::current_num_threads();
    let tasks = (rows * work_per_row / MIN_TASK_WORK).clamp(1, threads * 4);
    let tasks = if tasks > 1 { tasks.next_multiple_of(threads) } else { 1 };
    rows.div_ceil(tasks).max(1)
}

/// A ternary GEMM implementation.
///
/// Safe code calls it through [`gemm`], which checks the shapes; the SIMD implementations read
/// rows and activations through raw pointers bounded by those checks.
pub trait TernaryKernel: Send + Sync {
    fn name(&self) -> &'static str;

    /// For each row `r` in `rows` and token `t`, writes `W[r] · x_t` (without `w.scale()`) to
    /// `out[(r - rows.start) * x.n_tokens() + t]`.
    ///
    /// # Safety
    /// `rows.end <= w.rows()`, `x.cols() == w.cols()` and
    /// `out.len() == rows.len() * x.n_tokens()`. (The types' own invariants, held by their
    /// private fields, cover the rest: each row has the layout's byte length, each token
    /// `cols` values and `cols / ACT_BLOCK` scales and sums.)
    unsafe fn gemm_unchecked(&self, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]);
}

/// `kernel`'s product of rows `rows` of `w` with every token of `x` into `out`, after checking
/// the shapes that [`TernaryKernel::gemm_unchecked`] relies on.
pub fn gemm(kernel: &dyn TernaryKernel, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    assert!(rows.start <= rows.end && rows.end <= w.rows, "rows {rows:?} outside a matrix of {}", w.rows);
    assert_eq!(x.cols, w.cols, "activation length does not match the matrix");
    assert_eq!(out.len(), rows.len() * x.n_tokens, "output length does not match rows x tokens");
    // SAFETY: the three conditions of the contract were just checked.
    unsafe { kernel.gemm_unchecked(w, rows, x, out) }
}

impl std::fmt::Debug for dyn TernaryKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which kernel to use; `Auto` picks the fastest this CPU supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum KernelChoice {
    Auto,
    Scalar,
    Avx2,
    Avx512vnni,
    Neon,
    NeonDotprod,
}

/// Every kernel this CPU can run, reference first.
pub fn available() -> Vec<&'static dyn TernaryKernel> {
    #[allow(unused_mut)]
    let mut v: Vec<&'static dyn TernaryKernel> = vec![&scalar::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if x86::Avx2::detected() {
            v.push(&x86::Avx2);
        }
        if x86::Avx512Vnni::detected() {
            v.push(&x86::Avx512Vnni);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if neon::Neon::detected() {
            v.push(&neon::Neon);
        }
        if neon::NeonDotprod::detected() {
            v.push(&neon::NeonDotprod);
        }
    }
    v
}

/// Resolves a [`KernelChoice`], failing if this CPU lacks the instructions.
pub fn select(choice: KernelChoice) -> Result<&'static dyn TernaryKernel, String> {
    let all = available();
    let want = match choice {
        KernelChoice::Auto => return Ok(*all.last().expect("scalar is always available")),
        KernelChoice::Scalar => "scalar",
        KernelChoice::Avx2 => "avx2",
        KernelChoice::Avx512vnni => "avx512vnni",
        KernelChoice::Neon => "neon",
        KernelChoice::NeonDotprod => "neon-dotprod",
    };
    all.into_iter().find(|k| k.name() == want).ok_or_else(|| format!("this CPU cannot run the {want} kernel"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_groups_cover_every_token_once_in_even_groups() {
        assert_eq!(token_groups(9, 8).collect::<Vec<_>>(), [(0, 4), (4, 5)]);
        assert_eq!(token_groups(9, 4).collect::<Vec<_>>(), [(0, 3), (3, 3), (6, 3)]);
        for max in 1..=9 {
            for n in 0..=40 {
                let groups: Vec<_> = token_groups(n, max).collect();
                assert_eq!(groups.len(), n.div_ceil(max), "n={n} max={max}");
                let mut next = 0;
                for &(t0, len) in &groups {
                    assert_eq!(t0, next);
                    assert!((1..=max).contains(&len));
                    next += len;
                }
                assert_eq!(next, n);
                let (lo, hi) = (groups.iter().map(|g| g.1).min(), groups.iter().map(|g| g.1).max());
                assert!(hi.zip(lo).is_none_or(|(h, l)| h - l <= 1), "n={n} max={max}: {groups:?}");
            }
        }
    }

    fn matrix(format: TernaryFormat, rows: usize, cols: usize, values: &[i8], scales: &[f32]) -> TernaryMatrix {
        let bytes = formats::encode_matrix(format, rows, cols, values, scales);
        TernaryMatrix::new(format, rows, cols, WeightBytes::Owned(Arc::new(bytes))).unwrap()
    }

    /// Exact f64 value of the product the kernels approximate in f32.
    fn exact(m: &TernaryMatrix, values: &[i8], x: &QuantizedActivations, r: usize, t: usize) -> (f64, f64) {
        let bl = m.format.block_len();
        let (mut sum, mut mag) = (0f64, 0f64);
        for k in 0..m.cols {
            let d_w = m.format.block_scale(m.row_bytes(r), k / bl) as f64;
            let term = d_w * x.token_scales(t)[k / ACT_BLOCK] as f64 * values[r * m.cols + k] as f64 * x.token(t)[k] as f64;
            sum += term;
            mag += term.abs();
        }
        (sum * m.scale as f64, mag * m.scale.abs() as f64)
    }

    /// Random ternary values with random scales, one per row (`uniform`, which the SIMD
    /// kernels factor out) or one per block; and the generator, to draw activations from.
    fn random_matrix(
        format: TernaryFormat,
        rows: usize,
        cols: usize,
        uniform: bool,
        seed: u64,
    ) -> (TernaryMatrix, Vec<i8>, impl FnMut() -> u64) {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let values: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
        let n_blocks = rows * cols / format.block_len();
        let per_row = cols / format.block_len();
        let mut scales: Vec<f32> = (0..n_blocks).map(|_| 0.01 + (next() % 1000) as f32 / 500.0).collect();
        if uniform {
            for b in 0..n_blocks {
                scales[b] = scales[b / per_row * per_row];
            }
        }
        (matrix(format, rows, cols, &values, &scales), values, next)
    }

    fn format_strategy() -> impl Strategy<Value = TernaryFormat> {
        prop_oneof![Just(TernaryFormat::TQ2_0), Just(TernaryFormat::TQ1_0), Just(TernaryFormat::I2S)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every kernel this CPU can run agrees with the scalar reference, which agrees with
        /// the exact product.
        #[test]
        fn kernels_match_reference(
            format in format_strategy(),
            rows in 1usize..40,
            col_blocks in 1usize..5,
            // Up to a tile of eight and past it, and several tiles.
            n_tokens in prop_oneof![1usize..10, 16usize..36],
            // One scale per row (the SIMD kernels factor it out) or one per block.
            uniform in any::<bool>(),
            // Activation scales per block (Q8_K) or per token.
            per_token in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let cols = col_blocks * ACT_BLOCK;
            let (m, values, mut next) = random_matrix(format, rows, cols, uniform, seed);
            let per_row = cols / format.block_len();
            // I2_S has no block scales; random TQ block scales differ within a row once it has
            // two blocks.
            if format == TernaryFormat::I2S || uniform || per_row == 1 {
                prop_assert!(m.row_scales().is_some());
            }
            // Activations with varied magnitudes, some blocks all zero.
            let x: Vec<f32> = (0..n_tokens * cols).map(|i| {
                if (i / ACT_BLOCK) % 7 == 3 { 0.0 } else { ((next() % 20001) as f32 - 10000.0) / 1000.0 * (1 + i % 5) as f32 }
            }).collect();
            let mode = if per_token { ActScales::Token } else { ActScales::Block };
            let mut q = QuantizedActivations::default();
            q.requantize_with(&x, n_tokens, cols, mode);
            let mut want = vec![0f32; rows * n_tokens];
            m.matmul(&scalar::Scalar, &q, &mut want);
            for t in 0..n_tokens {
                for r in 0..rows {
                    let (e, mag) = exact(&m, &values, &q, r, t);
                    prop_assert!((want[t * rows + r] as f64 - e).abs() <= 1e-5 * mag + 1e-6, "scalar {} vs exact {}", want[t * rows + r], e);
                }
            }
            for kernel in available() {
                let mut got = vec![0f32; rows * n_tokens];
                m.matmul(kernel, &q, &mut got);
                for t in 0..n_tokens {
                    for r in 0..rows {
                        let (_, mag) = exact(&m, &values, &q, r, t);
                        let (g, w) = (got[t * rows + r], want[t * rows + r]);
                        prop_assert!((g - w).abs() as f64 <= 1e-5 * mag + 1e-6, "{}: {g} vs scalar {w} ({format:?}, row {r}, token {t})", kernel.name());
                    }
                }
            }
        }

        /// A token's result is the same bit for bit whether it is multiplied alone or with
        /// others: verifying k drafted tokens in one pass must give the logits that decoding
        /// them one by one would (greedy speculative decoding is lossless only then).
        #[test]
        fn batched_tokens_equal_single_tokens(
            format in format_strategy(),
            rows in 1usize..24,
            col_blocks in 1usize..4,
            n_tokens in prop_oneof![2usize..12, 16usize..40],
            uniform in any::<bool>(),
            per_token in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let cols = col_blocks * ACT_BLOCK;
            let (m, _, mut next) = random_matrix(format, rows, cols, uniform, seed);
            let x: Vec<f32> = (0..n_tokens * cols).map(|_| ((next() % 20001) as f32 - 10000.0) / 997.0).collect();
            let mode = if per_token { ActScales::Token } else { ActScales::Block };
            let quantize = |x: &[f32], n: usize| {
                let mut q = QuantizedActivations::default();
                q.requantize_with(x, n, cols, mode);
                q
            };
            let all = quantize(&x, n_tokens);
            for kernel in available() {
                let mut batched = vec![0f32; rows * n_tokens];
                m.matmul(kernel, &all, &mut batched);
                for t in 0..n_tokens {
                    let one = quantize(&x[t * cols..(t + 1) * cols], 1);
                    let mut single = vec![0f32; rows];
                    m.matmul(kernel, &one, &mut single);
                    for r in 0..rows {
                        prop_assert_eq!(single[r].to_bits(), batched[t * rows + r].to_bits(),
                            "{}: row {} token {} of {}", kernel.name(), r, t, n_tokens);
                    }
                }
            }
        }

        /// A batch big enough to be quantized on several threads gives each token exactly
        /// what quantizing it alone gives.
        #[test]
        fn batch_quantization_is_token_by_token(
            blocks in 1usize..5,
            extra_tokens in 0usize..8,
            per_token in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let cols = blocks * ACT_BLOCK;
            let n_tokens = PARALLEL_ELEMENTS.div_ceil(cols) + extra_tokens;
            let mut state = seed | 1;
            let x: Vec<f32> = (0..n_tokens * cols).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                (state % 20001) as f32 / 100.0 - 100.0
            }).collect();
            let mode = if per_token { ActScales::Token } else { ActScales::Block };
            let mut all = QuantizedActivations::default();
            all.requantize_with(&x, n_tokens, cols, mode);
            let mut one = QuantizedActivations::default();
            for t in 0..n_tokens {
                one.requantize_with(&x[t * cols..(t + 1) * cols], 1, cols, mode);
                prop_assert_eq!(all.token(t), one.token(0));
                prop_assert_eq!(all.token_scales(t), one.token_scales(0));
                let nb = cols / ACT_BLOCK;
                prop_assert_eq!(&all.interleaved[t * cols..(t + 1) * cols], &one.interleaved[..]);
                prop_assert_eq!(&all.sums[t * nb..(t + 1) * nb], &one.sums[..]);
                prop_assert_eq!(all.scaled_sums[t].to_bits(), one.scaled_sums[0].to_bits());
                prop_assert_eq!(all.totals[t], one.totals[0]);
            }
        }

        /// Quantization follows llama.cpp's Q8_K: the largest value maps to -127 * sign.
        #[test]
        fn activation_quantization_is_q8k(xs in proptest::collection::vec(-100f32..100f32, ACT_BLOCK)) {
            let q = QuantizedActivations::quantize(&xs, 1, ACT_BLOCK);
            let d = q.scales()[0];
            for (i, &v) in xs.iter().enumerate() {
                prop_assert!((q.values()[i] as f32 * d - v).abs() <= d.abs() * 0.5 + 1e-4);
            }
            prop_assert_eq!(q.sums()[0], q.values().iter().map(|&v| v as i32).sum::<i32>());
        }

        /// Per-token scales: one absmax scale over the whole vector, shared by its blocks, and
        /// the token's total is the sum of its values.
        #[test]
        fn per_token_quantization_shares_one_scale(
            blocks in 1usize..5,
            n_tokens in 1usize..4,
            seed in any::<u64>(),
        ) {
            let cols = blocks * ACT_BLOCK;
            let mut state = seed | 1;
            let x: Vec<f32> = (0..n_tokens * cols).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                (state % 20001) as f32 / 100.0 - 100.0
            }).collect();
            let q = QuantizedActivations::quantize_per_token(&x, n_tokens, cols);
            prop_assert_eq!(q.mode(), ActScales::Token);
            for t in 0..n_tokens {
                let xs = &x[t * cols..(t + 1) * cols];
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = q.token_scales(t)[0];
                prop_assert!(q.token_scales(t).iter().all(|&s| s == d));
                prop_assert!((d.abs() - amax / 127.0).abs() <= 1e-6 * amax);
                prop_assert_eq!(q.totals()[t], q.token(t).iter().map(|&v| v as i32).sum::<i32>());
                for (i, &v) in xs.iter().enumerate() {
                    prop_assert!((q.token(t)[i] as f32 * d - v).abs() <= d.abs() * 0.5 + 1e-4);
                }
            }
        }
    }

    /// Several matrices split into many row tasks over a batch of tokens: every output is the
    /// bits of that matrix's rows times that token alone.
    #[test]
    fn matmul_group_splits_rows_and_keeps_each_tokens_bits() {
        let cols = 8 * ACT_BLOCK;
        let n_tokens = 5;
        let (a, _, mut next) = random_matrix(TernaryFormat::TQ2_0, 300, cols, true, 7);
        let (b, _, _) = random_matrix(TernaryFormat::TQ2_0, 70, cols, false, 9);
        let b = b.with_scale(0.75);
        assert!(rows_per_task(370, cols * n_tokens) < 300, "the test needs several tasks a matrix");
        let x: Vec<f32> = (0..n_tokens * cols).map(|_| ((next() % 20001) as f32 - 10000.0) / 997.0).collect();
        let q = QuantizedActivations::quantize(&x, n_tokens, cols);
        for kernel in available() {
            let (mut out_a, mut out_b) = (vec![0f32; 300 * n_tokens], vec![0f32; 70 * n_tokens]);
            matmul_group(kernel, &[&a, &b], &q, &mut [&mut out_a, &mut out_b]);
            for t in 0..n_tokens {
                let one = QuantizedActivations::quantize(&x[t * cols..(t + 1) * cols], 1, cols);
                for (m, out) in [(&a, &out_a), (&b, &out_b)] {
                    let mut single = vec![0f32; m.rows()];
                    m.matmul(kernel, &one, &mut single);
                    let got = &out[t * m.rows()..(t + 1) * m.rows()];
                    assert!(
                        single.iter().zip(got).all(|(s, g)| s.to_bits() == g.to_bits()),
                        "{}: token {t} of a {}-row matrix",
                        kernel.name(),
                        m.rows()
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside a matrix")]
    fn gemm_refuses_rows_past_the_matrix() {
        let m = matrix(TernaryFormat::TQ2_0, 2, 256, &[0; 512], &[1.0, 1.0]);
        let x = QuantizedActivations::quantize(&[1.0; 256], 1, 256);
        let mut out = vec![0f32; 3];
        for kernel in available() {
            gemm(kernel, &m, 0..3, &x, &mut out);
        }
    }

    #[test]
    #[should_panic(expected = "activation length")]
    fn gemm_refuses_activations_of_another_length() {
        let m = matrix(TernaryFormat::TQ2_0, 1, 512, &[0; 512], &[1.0, 1.0]);
        let x = QuantizedActivations::quantize(&[1.0; 256], 1, 256);
        gemm(*available().last().unwrap(), &m, 0..1, &x, &mut [0f32; 1]);
    }

    /// The property tests above only mean something if the SIMD kernels are among those they
    /// run: every x86-64 machine CI uses has AVX2, and every aarch64 core has NEON (qemu's
    /// default CPU has `dotprod` too).
    #[test]
    fn simd_kernels_are_detected() {
        let names: Vec<&str> = available().iter().map(|k| k.name()).collect();
        #[cfg(target_arch = "x86_64")]
        assert!(names.contains(&"avx2"), "{names:?}");
        #[cfg(target_arch = "aarch64")]
        assert!(names.contains(&"neon"), "{names:?}");
        assert_eq!(select(KernelChoice::Scalar).unwrap().name(), "scalar");
        assert_eq!(select(KernelChoice::Auto).unwrap().name(), *names.last().unwrap());
    }

    #[test]
    fn rejects_wrong_sizes() {
        let bytes = WeightBytes::Owned(Arc::new(vec![0u8; 65]));
        assert!(TernaryMatrix::new(TernaryFormat::TQ2_0, 1, 256, bytes).is_err());
        let bytes = WeightBytes::Owned(Arc::new(vec![0u8; 66]));
        assert!(TernaryMatrix::new(TernaryFormat::TQ2_0, 1, 128, bytes).is_err());
    }
}
