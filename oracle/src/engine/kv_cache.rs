//! Attention keys and values: fixed-size pages from a shared pool, a list of pages per sequence.
//!
//! A sequence takes pages as it grows and gives them back when it is rolled back, emptied or
//! dropped, so memory follows the positions actually held across every slot (32 short chats
//! cost 32 short chats, not 32 contexts), and the pool's cap bounds the whole (vLLM's paged
//! KV cache, without the copy-on-write sharing of prefixes). Under a cap, the scheduler has a
//! request reserve the pages for its longest possible length before it starts
//! ([`KvCache::reserve`]), so a running request never runs out part-way.
//!
//! Speculative verification appends k drafted positions and then keeps only those the target
//! accepted, so rolling back is first-class: [`KvCache::truncate`] moves the length and hands
//! back whole pages past it (and past the reservation); the next forward pass overwrites the
//! rejected positions.
//!
//! Keys and values are stored as f16, as llama.cpp does by default: half the memory, and the
//! same rounding as the reference implementation.

use std::sync::{Arc, Mutex};

use half::f16;

/// Positions per page.
pub const PAGE: usize = 32;

/// One page: for each layer, the keys and then the values of [`PAGE`] positions, head-major:
/// each key/value head's [`PAGE`] vectors side by side, so that attention, which takes one
/// head at a time, reads a page's keys for it as one run of memory. (Position-major rows put
/// each head's 256 bytes 1,280 bytes apart on the 2B-4T shape, and after 1,000 positions
/// attention read its keys at about 6 GB/s.)
type Page = Box<[f16]>;

/// Pages of one model's shape, shared by the sequences that take from it.
#[derive(Debug)]
pub struct KvPool {
    n_layer: usize,
    kv_dim: usize,
    head_dim: usize,
    /// Most pages out at once; `None`: as many as asked for.
    cap: Option<usize>,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Pages given back, kept for the next taker.
    free: Vec<Page>,
    /// Pages held by sequences now.
    out: usize,
    /// The most ever held at once.
    peak: usize,
}

/// The pool's cap is reached: the sequence must wait for pages, or something must give some
/// back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the KV cache is full ({pages} pages of {PAGE} positions)")]
pub struct PoolFull {
    pub pages: usize,
}

impl KvPool {
    /// A pool for a model of `n_layer` layers and `kv_dim` key values per position in heads of
    /// `head_dim`, holding at most `cap_positions` positions (rounded up to whole pages) when
    /// given.
    pub fn new(n_layer: usize, kv_dim: usize, head_dim: usize, cap_positions: Option<usize>) -> Arc<Self> {
        assert!(head_dim > 0 && kv_dim % head_dim == 0, "{kv_dim} key values a position are not heads of {head_dim}");
        Arc::new(Self { n_layer, kv_dim, head_dim, cap: cap_positions.map(|p| p.div_ceil(PAGE)), state: Mutex::default() })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Result<Page, PoolFull> {
        let mut s = self.state();
        if self.cap.is_some_and(|cap| s.out >= cap) {
            return Err(PoolFull { pages: s.out });
        }
        s.out += 1;
        s.peak = s.peak.max(s.out);
        Ok(s.free.pop().unwrap_or_else(|| vec![f16::ZERO; self.page_len()].into_boxed_slice()))
    }

    fn give(&self, pages: impl Iterator<Item = Page>) {
        let mut s = self.state();
        for p in pages {
            s.out -= 1;
            s.free.push(p);
        }
    }

    /// Values in one page.
    fn page_len(&self) -> usize {
        self.n_layer * 2 * PAGE * self.kv_dim
    }

    /// Pages held by sequences now.
    pub fn pages_out(&self) -> usize {
        self.state().out
    }

    /// The most pages held at once so far.
    pub fn peak_pages(&self) -> usize {
        self.state().peak
    }

    /// The cap in pages, if any.
    pub fn cap_pages(&self) -> Option<usize> {
        self.cap
    }

    /// Bytes of one page.
    pub fn page_bytes(&self) -> usize {
        self.page_len() * std::mem::size_of::<f16>()
    }
}

/// One sequence's keys and values, up to `capacity` positions.
#[derive(Debug)]
pub struct KvCache {
    pool: Arc<KvPool>,
    capacity: usize,
    len: usize,
    /// Page `i` holds positions `i * PAGE..(i + 1) * PAGE`.
    pages: Vec<Page>,
    /// Pages kept whatever the length ([`KvCache::reserve`]).
    reserved: usize,
}

impl KvCache {
    /// A cache with a pool of its own, without a cap.
    pub fn new(n_layer: usize, kv_dim: usize, head_dim: usize, capacity: usize) -> Self {
        Self::in_pool(&KvPool::new(n_layer, kv_dim, head_dim, None), capacity)
    }

    /// A cache that takes its pages from `pool`.
    pub fn in_pool(pool: &Arc<KvPool>, capacity: usize) -> Self {
        Self { pool: pool.clone(), capacity, len: 0, pages: vec![], reserved: 0 }
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

    /// Pages held.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Forgets every position from `len` on, and gives back the pages past it and past the
    /// reservation.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let keep = self.len.div_ceil(PAGE).max(self.reserved);
        if self.pages.len() > keep {
            self.pool.give(self.pages.drain(keep..));
        }
    }

    /// Takes the pages that positions `0..positions` need, all or none, and keeps them until
    /// [`KvCache::release`] whatever the length: a sequence that holds its longest possible
    /// length never waits for pages part-way.
    pub fn reserve(&mut self, positions: usize) -> Result<(), PoolFull> {
        self.grow(positions)?;
        self.reserved = self.reserved.max(positions.div_ceil(PAGE));
        Ok(())
    }

    /// Ends the reservation, giving back the pages past the length.
    pub fn release(&mut self) {
        self.reserved = 0;
        self.truncate(self.len);
    }

    /// Takes the pages that positions `0..positions` need, all or none.
    fn grow(&mut self, positions: usize) -> Result<(), PoolFull> {
        assert!(positions <= self.capacity, "KV cache overflow");
        let need = positions.div_ceil(PAGE);
        let before = self.pages.len();
        while self.pages.len() < need {
            match self.pool.take() {
                Ok(p) => self.pages.push(p),
                Err(e) => {
                    self.pool.give(self.pages.drain(before..));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Stores keys and values for positions `start..start + n` of one layer.
    ///
    /// # Panics
    /// If the pages are not there and the pool is full: a caller sharing a capped pool
    /// reserves them first ([`KvCache::reserve`]).
    pub fn store(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let kv_dim = self.pool.kv_dim;
        let n = k.len() / kv_dim;
        if let Err(e) = self.grow(start + n) {
            panic!("{e}: pages are reserved before a forward pass");
        }
        let hd = self.pool.head_dim;
        for i in 0..n {
            let (page, keys, p) = self.slot(layer, start + i);
            let page = &mut self.pages[page];
            let (k, v) = (&k[i * kv_dim..(i + 1) * kv_dim], &v[i * kv_dim..(i + 1) * kv_dim]);
            for (h, (k, v)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
                let at = keys + (h * PAGE + p) * hd;
                for (d, s) in page[at..at + hd].iter_mut().zip(k) {
                    *d = f16::from_f32(*s);
                }
                let at = at + PAGE * kv_dim;
                for (d, s) in page[at..at + hd].iter_mut().zip(v) {
                    *d = f16::from_f32(*s);
                }
            }
        }
    }

    /// Marks positions up to `len` as filled (after every layer stored them).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.pages.len() * PAGE && len <= self.capacity);
        self.len = len;
    }

    /// The page of position `p`, where `layer`'s keys start in it, and `p`'s place among the
    /// page's positions (its values start `PAGE * kv_dim` after the keys).
    fn slot(&self, layer: usize, p: usize) -> (usize, usize, usize) {
        (p / PAGE, self.layer_start(layer), p % PAGE)
    }

    /// Where `layer`'s keys start in every page: each layer holds [`PAGE`] positions' keys,
    /// then as many values.
    fn layer_start(&self, layer: usize) -> usize {
        layer * 2 * PAGE * self.pool.kv_dim
    }

    /// The keys and values of positions `0..len` in `layer`, a page at a time.
    pub fn layer_pages(&self, layer: usize, len: usize) -> impl Iterator<Item = KvPage<'_>> + '_ {
        assert!(len <= self.pages.len() * PAGE);
        let (kv_dim, head_dim) = (self.pool.kv_dim, self.pool.head_dim);
        let at = self.layer_start(layer);
        self.pages.iter().take(len.div_ceil(PAGE)).enumerate().map(move |(i, page)| KvPage {
            keys: &page[at..at + PAGE * kv_dim],
            values: &page[at + PAGE * kv_dim..at + 2 * PAGE * kv_dim],
            n: (len - i * PAGE).min(PAGE),
            head_dim,
        })
    }

    pub fn n_layer(&self) -> usize {
        self.pool.n_layer
    }
}

/// One page of one layer: the keys and values of its first `positions()` positions.
#[derive(Clone, Copy, Debug)]
pub struct KvPage<'a> {
    keys: &'a [f16],
    values: &'a [f16],
    n: usize,
    head_dim: usize,
}

impl<'a> KvPage<'a> {
    /// Positions held (up to [`PAGE`]).
    pub fn positions(&self) -> usize {
        self.n
    }

    /// Key/value head `h`'s keys, `head_dim` apiece, position after position.
    pub fn keys(&self, h: usize) -> &'a [f16] {
        self.head(self.keys, h)
    }

    /// Key/value head `h`'s values, laid out as [`KvPage::keys`].
    pub fn values(&self, h: usize) -> &'a [f16] {
        self.head(self.values, h)
    }

    fn head(&self, block: &'a [f16], h: usize) -> &'a [f16] {
        let at = h * PAGE * self.head_dim;
        &block[at..at + self.n * self.head_dim]
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        self.pool.give(self.pages.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: usize, kv_dim: usize) -> Vec<f32> {
        (0..kv_dim).map(|i| ((seed * 31 + i) % 97) as f32 / 8.0).collect()
    }

    #[test]
    fn positions_read_back_across_pages() {
        let (layers, kv_dim, head_dim) = (3, 4, 2);
        let mut c = KvCache::new(layers, kv_dim, head_dim, 200);
        let n = 2 * PAGE + 5;
        for l in 0..layers {
            let k: Vec<f32> = (0..n).flat_map(|p| row(p + 1000 * l, kv_dim)).collect();
            let v: Vec<f32> = (0..n).flat_map(|p| row(p + 7 + 1000 * l, kv_dim)).collect();
            c.store(l, 0, &k[..10 * kv_dim], &v[..10 * kv_dim]);
            c.store(l, 10, &k[10 * kv_dim..], &v[10 * kv_dim..]);
        }
        c.set_len(n);
        assert_eq!(c.pages(), 3);
        for l in 0..layers {
            // Each position's heads, gathered back into a row.
            let rows = |part: fn(&KvPage, usize) -> Vec<f16>| -> Vec<Vec<f16>> {
                c.layer_pages(l, n)
                    .flat_map(|page| {
                        (0..page.positions()).map(move |p| {
                            (0..kv_dim / head_dim)
                                .flat_map(|h| part(&page, h)[p * head_dim..(p + 1) * head_dim].to_vec())
                                .collect()
                        })
                    })
                    .collect()
            };
            let keys = rows(|page, h| page.keys(h).to_vec());
            let values = rows(|page, h| page.values(h).to_vec());
            assert_eq!((keys.len(), values.len()), (n, n));
            for p in 0..n {
                let want: Vec<f16> = row(p + 1000 * l, kv_dim).into_iter().map(f16::from_f32).collect();
                assert_eq!(keys[p], want, "key {l} {p}");
                let want: Vec<f16> = row(p + 7 + 1000 * l, kv_dim).into_iter().map(f16::from_f32).collect();
                assert_eq!(values[p], want, "value {l} {p}");
            }
        }
    }

    #[test]
    fn pages_go_back_on_truncate_and_drop_and_the_cap_holds() {
        let pool = KvPool::new(2, 8, 4, Some(3 * PAGE));
        let mut a = KvCache::in_pool(&pool, 1000);
        let mut b = KvCache::in_pool(&pool, 1000);
        a.grow(2 * PAGE + 1).unwrap();
        assert_eq!(pool.pages_out(), 3);
        // Full: b gets nothing, and a failed reservation takes nothing.
        assert_eq!(b.grow(1), Err(PoolFull { pages: 3 }));
        assert_eq!((b.pages(), pool.pages_out()), (0, 3));
        a.set_len(2 * PAGE + 1);
        a.truncate(PAGE);
        assert_eq!((a.pages(), pool.pages_out()), (1, 1));
        b.grow(2 * PAGE).unwrap();
        assert_eq!(b.grow(2 * PAGE + 1), Err(PoolFull { pages: 3 }));
        assert_eq!(b.pages(), 2, "a refused reservation keeps what was there before");
        drop(a);
        b.reserve(3 * PAGE).unwrap();
        assert_eq!((pool.pages_out(), pool.peak_pages()), (3, 3));
        b.truncate(0);
        assert_eq!(pool.pages_out(), 3, "reserved pages stay");
        b.release();
        assert_eq!(pool.pages_out(), 0);
    }
}
