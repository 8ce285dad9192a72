//! The attention key/value cache of one sequence.
//!
//! Speculative verification appends k drafted positions and then keeps only those the target
//! accepted, so rolling back is first-class: [`KvCache::truncate`] just moves the length, and
//! the next forward pass overwrites the rejected positions.
//!
//! Keys and values are stored as f16, as llama.cpp does by default: half the memory, and the
//! same rounding as the reference implementation.

use half::f16;

#[derive(Debug, Clone)]
pub struct KvCache {
    n_layer: usize,
    kv_dim: usize,
    capacity: usize,
    len: usize,
    /// Per layer: `capacity * kv_dim` keys, position-major.
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
}

impl KvCache {
    pub fn new(n_layer: usize, kv_dim: usize, capacity: usize) -> Self {
        Self {
            n_layer,
            kv_dim,
            capacity,
            len: 0,
            keys: (0..n_layer).map(|_| Vec::new()).collect(),
            values: (0..n_layer).map(|_| Vec::new()).collect(),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Stores keys and values for positions `start..start + n` of one layer (growing the
    /// buffers on demand, so a short conversation does not pay for the whole context).
    pub fn store(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.kv_dim;
        assert!(start + n <= self.capacity, "KV cache overflow");
        let need = (start + n) * self.kv_dim;
        for buf in [&mut self.keys[layer], &mut self.values[layer]] {
            if buf.len() < need {
                buf.resize(need.max(buf.len() * 2).min(self.capacity * self.kv_dim), f16::ZERO);
            }
        }
        for (d, s) in self.keys[layer][start * self.kv_dim..need].iter_mut().zip(k) {
            *d = f16::from_f32(*s);
        }
        for (d, s) in self.values[layer][start * self.kv_dim..need].iter_mut().zip(v) {
            *d = f16::from_f32(*s);
        }
    }

    /// Marks positions up to `len` as filled (after every layer stored them).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity);
        self.len = len;
    }

    pub fn keys(&self, layer: usize) -> &[f16] {
        &self.keys[layer]
    }

    pub fn values(&self, layer: usize) -> &[f16] {
        &self.values[layer]
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }
}
