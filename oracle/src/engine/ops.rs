//! The per-sequence operations of the forward pass, apart from the graph in `model.rs`:
//! RMSNorm, rotary position embedding and causal attention over the KV cache, with
//! llama.cpp's f16 roundings where they meet f16 data.

use rayon::prelude::*;

use super::batch::RowMap;
use super::config::{BitNetConfig, RopeStyle};
use super::kernels::attention::CachedHead;
use super::kv_cache::KvCache;

/// Rotary position embedding, NeoX style (dimension i with i + n_rot/2) or interleaved
/// (2i with 2i+1), on the first `n_rot` dimensions of each head, with the file's position
/// scaling ([`shard_shared::hparams::Rope`]).
pub fn rope(c: &BitNetConfig, x: &mut [f32], n_heads: usize, start: usize) {
    let half = c.rope.n_rot / 2;
    let width = n_heads * c.head_dim;
    let mut angles = Vec::with_capacity(half);
    for (t, row) in x.chunks_exact_mut(width).enumerate() {
        c.rope.cos_sin(start + t, &mut angles);
        for head in row.chunks_exact_mut(c.head_dim) {
            for (i, &(cos, sin)) in angles.iter().enumerate() {
                let (ia, ib) = match c.rope_style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * cos - b * sin;
                head[ib] = a * sin + b * cos;
            }
        }
    }
}

/// Causal attention of every new query over its own sequence's cached positions up to
/// its own.
///
/// Like llama.cpp's CPU path, the query and the softmax weights are rounded to f16 where
/// they meet the f16 cache, and products accumulate in f32. The query heads that share a
/// key/value head go together ([`super::kernels::attention`]), so each cached vector is converted
/// once for the group; the result is the same bits as one head at a time.
pub(crate) fn attention(
    c: &BitNetConfig,
    q: &[f32],
    caches: &[&KvCache],
    starts: &[usize],
    map: &RowMap,
    layer: usize,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let group = c.n_head / c.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    // Parallel only when there is enough work to share; each head's result is the same either
    // way.
    let work: usize = map.rows.iter().map(|&(s, t)| starts[s] + t + 1).sum::<usize>() * c.n_head * hd;
    let threads = if work >= 1 << 16 { rayon::current_num_threads() } else { 1 };
    // Query heads per task: a whole group (sharing its key/value head) unless that leaves the
    // threads unevenly loaded, as one token's 5 groups on 2 threads would (3 against 2).
    let per_task = (1..=group)
        .rev()
        .filter(|d| group % d == 0)
        .find(|&d| {
            let tasks = map.rows.len() * c.n_head / d;
            tasks % threads == 0 || tasks >= 4 * threads
        })
        .unwrap_or(1);
    let tasks_per_row = c.n_head / per_task;
    // Each task: `per_task` query heads of one token that share a key/value head, whose
    // outputs lie side by side.
    let task = |(i, o): (usize, &mut [f32])| {
        let (row, h0) = (i / tasks_per_row, i % tasks_per_row * per_task);
        let kvh = h0 / group;
        let (s, t) = map.rows[row];
        let cache = caches[s];
        let heads = row * c.n_embd + h0 * hd;
        let queries: Vec<f32> = q[heads..heads + per_task * hd].iter().map(|&v| round_f16(v)).collect();
        let len = starts[s] + t + 1;
        // Scores, then softmax weights, one row of `len` per query head.
        let mut weights = vec![0f32; per_task * len];
        // Each page's pass prefetches the next page's keys (then values), whose memory
        // lies a whole page of every layer away.
        let pages: Vec<_> = cache.layer_pages(layer, len).collect();
        let mut p0 = 0;
        for (i, page) in pages.iter().enumerate() {
            let n = page.positions();
            let next = pages.get(i + 1).map_or(pages[0].values(kvh), |p| p.keys(kvh));
            let keys = CachedHead::new(page.keys(kvh), hd, n, hd).then(next);
            super::kernels::attention::key_scores(keys, &queries, scale, &mut weights[p0..], len);
            p0 += n;
        }
        for w in weights.chunks_exact_mut(len) {
            let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            for s in w.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            for s in w.iter_mut() {
                *s = round_f16(*s / total);
            }
        }
        o.fill(0.0);
        let mut p0 = 0;
        for (i, page) in pages.iter().enumerate() {
            let n = page.positions();
            let next = pages.get(i + 1).map_or(&[][..], |p| p.values(kvh));
            let values = CachedHead::new(page.values(kvh), hd, n, hd).then(next);
            super::kernels::attention::weighted_values(values, &weights[p0..], len, o);
            p0 += n;
        }
    };
    if threads > 1 {
        out.par_chunks_mut(per_task * hd).enumerate().for_each(task);
    } else {
        out.chunks_mut(per_task * hd).enumerate().for_each(task);
    }
    debug_assert_eq!(out.len(), map.rows.len() * c.n_embd);
}

pub fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// RMSNorm of each row of `x` (rows of `w.len()`), times `w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / d as f64;
        let inv = 1.0 / ((ms as f32) + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    }
}
