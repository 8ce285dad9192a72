//! The draft model in the browser: downloaded once with progress, checked against the sha256
//! the Oracle publishes, and kept in the Cache API so a second visit loads it from disk.
//!
//! The cache key carries the hash (`…?sha256=…`), so a new model on the Oracle is a new entry,
//! and a cached copy is hashed again before use: a corrupted cache entry is thrown away and
//! downloaded afresh.

use js_sys::Uint8Array;
use sha2::{Digest, Sha256};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Response};

use crate::http::{self, js_error};
use crate::oracle_api::ScoutModel;

const CACHE_NAME: &str = "shard-models-v1";

/// Where the model bytes came from, for the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Network,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn cache_key(model: &ScoutModel) -> String {
    format!("{}?sha256={}", model.url, model.sha256)
}

async fn open_cache() -> Option<Cache> {
    let caches = web_sys::window()?.caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok().map(|c| c.unchecked_into())
}

async fn cached(cache: &Cache, key: &str) -> Option<Vec<u8>> {
    let hit = JsFuture::from(cache.match_with_str(key)).await.ok()?;
    let resp: Response = hit.dyn_into().ok()?;
    let buf = JsFuture::from(resp.array_buffer().ok()?).await.ok()?;
    Some(Uint8Array::new(&buf).to_vec())
}

async fn store(cache: &Cache, key: &str, bytes: &[u8]) -> Result<(), String> {
    let mut body = bytes.to_vec();
    let resp = Response::new_with_opt_u8_array(Some(&mut body)).map_err(js_error)?;
    JsFuture::from(cache.put_with_str(key, &resp)).await.map_err(js_error)?;
    Ok(())
}

/// The model's bytes, from the cache when a verified copy is there, else from the Oracle.
pub async fn load(model: &ScoutModel, progress: impl FnMut(u64, u64)) -> Result<(Vec<u8>, Source), String> {
    let cache = open_cache().await;
    let key = cache_key(model);
    if let Some(cache) = &cache {
        if let Some(bytes) = cached(cache, &key).await {
            if sha256_hex(&bytes) == model.sha256 {
                return Ok((bytes, Source::Cache));
            }
            let _ = JsFuture::from(cache.delete_with_str(&key)).await; // damaged: fetch again
        }
    }
    let bytes = http::download(&model.url, model.bytes, progress).await?;
    let got = sha256_hex(&bytes);
    if got != model.sha256 {
        return Err(format!("the downloaded model's sha256 is {got}, but the Oracle published {}", model.sha256));
    }
    if let Some(cache) = &cache {
        if let Err(e) = store(cache, &key, &bytes).await {
            web_sys::console::warn_1(&format!("could not cache the draft model: {e}").into());
        }
    }
    Ok((bytes, Source::Network))
}
