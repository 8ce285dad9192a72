//! The per-sequence operations of the forward pass, apart from the graph in `model.rs`:
//! RMSNorm, rotary position embedding and causal attention over the KV cache, with
//! llama.cpp's f16 roundings where they meet f16 data.

use rayon::prelude::*;

use super::batch::RowMap;
use super::config::{Activation, BitNetConfig, RopeStyle};
use super::kernels::attention::CachedHead;
use super::kernels::PARALLEL_ELEMENTS;
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
        // One task a steal, as in `kernels::matmul_group`.
        out.par_chunks_mut(per_task * hd).enumerate().with_max_len(1).for_each(task);
    } else {
        out.chunks_mut(per_task * hd).enumerate().for_each(task);
    }
    debug_assert_eq!(out.len(), map.rows.len() * c.n_embd);
}

pub fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// RMSNorm of each row of `x` (rows of `w.len()`), times `w`. A batch of rows is split over
/// the pool's threads.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let one = |(row, o): (&[f32], &mut [f32])| {
        let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / d as f64;
        let inv = 1.0 / ((ms as f32) + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    };
    if x.len() > d && x.len() >= PARALLEL_ELEMENTS {
        x.par_chunks_exact(d).zip(out.par_chunks_exact_mut(d)).for_each(one);
    } else {
        x.chunks_exact(d).zip(out.chunks_exact_mut(d)).for_each(one);
    }
}

/// `x += y`, element by element (the residual stream).
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    let add = |(a, b): (&mut [f32], &[f32])| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    if x.len() >= 2 * PARALLEL_ELEMENTS {
        x.par_chunks_mut(PARALLEL_ELEMENTS).zip(y.par_chunks(PARALLEL_ELEMENTS)).for_each(add);
    } else {
        add((x, y));
    }
}

/// The gated feed-forward's middle: `gate = act(gate) * up`, element by element.
pub fn gated(activation: Activation, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    let apply = |(g, u): (&mut [f32], &[f32])| match activation {
        Activation::Silu => g.iter_mut().zip(u).for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u),
        Activation::ReluSquared => g.iter_mut().zip(u).for_each(|(g, u)| *g = g.max(0.0).powi(2) * u),
    };
    if gate.len() >= 2 * PARALLEL_ELEMENTS {
        gate.par_chunks_mut(PARALLEL_ELEMENTS).zip(up.par_chunks(PARALLEL_ELEMENTS)).for_each(apply);
    } else {
        apply((gate, up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch big enough to be split over threads gives each row exactly what it gives alone.
    #[test]
    fn batched_elementwise_ops_are_row_by_row() {
        let (d, n) = (1024, 2 * PARALLEL_ELEMENTS / 1024 + 3);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919 % 2003) as f32 - 1000.0) / 97.0).collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + (i % 13) as f32 / 7.0).collect();
        let mut all = vec![0f32; n * d];
        rms_norm(&x, &w, 1e-5, &mut all);
        let mut one = vec![0f32; d];
        for t in 0..n {
            rms_norm(&x[t * d..(t + 1) * d], &w, 1e-5, &mut one);
            assert_eq!(one, all[t * d..(t + 1) * d], "row {t}");
        }
        let up: Vec<f32> = x.iter().map(|v| v * 0.25 - 1.0).collect();
        for activation in [Activation::Silu, Activation::ReluSquared] {
            let mut gate = x.clone();
            gated(activation, &mut gate, &up);
            for (i, ((g, x), u)) in gate.iter().zip(&x).zip(&up).enumerate().step_by(997) {
                let mut alone = [*x];
                gated(activation, &mut alone, &[*u]);
                assert_eq!(g.to_bits(), alone[0].to_bits(), "{activation:?} element {i}");
            }
        }
        let mut sum = x.clone();
        add_assign(&mut sum, &up);
        assert!(sum.iter().zip(x.iter().zip(&up)).all(|(s, (a, b))| s.to_bits() == (a + b).to_bits()));
    }
}
