//! This browser's Scout identity: an ed25519 key kept in IndexedDB, so that a tab that
//! reloads is the same Scout (its credits and standing belong to its peer id), and the chat on
//! the same origin can prove it with a signed request and be served in the Scout tier.
//!
//! The key is made the first time Scout mode starts; the chat only uses one that exists. Each
//! request carries a fresh proof ([`shard_shared::trust::sign_proof`]): the Oracle accepts a
//! proof once, within a minute of its clock.

use std::cell::RefCell;
use std::rc::Rc;

use futures::channel::oneshot;
use js_sys::Uint8Array;
use libp2p::identity::Keypair;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

use crate::http::js_error;

const DB_NAME: &str = "shard";
const STORE: &str = "identity";
const KEY: &str = "scout-key";

/// Waits for an IndexedDB request to succeed or fail.
async fn finish(req: &IdbRequest) -> Result<JsValue, String> {
    let (tx, rx) = oneshot::channel::<bool>();
    let tx = Rc::new(RefCell::new(Some(tx)));
    let (t1, t2) = (tx.clone(), tx);
    let ok = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        if let Some(t) = t1.borrow_mut().take() {
            let _ = t.send(true);
        }
    });
    let err = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        if let Some(t) = t2.borrow_mut().take() {
            let _ = t.send(false);
        }
    });
    req.set_onsuccess(Some(ok.as_ref().unchecked_ref()));
    req.set_onerror(Some(err.as_ref().unchecked_ref()));
    let succeeded = rx.await.unwrap_or(false);
    req.set_onsuccess(None);
    req.set_onerror(None);
    if succeeded {
        req.result().map_err(js_error)
    } else {
        Err(req.error().ok().flatten().map_or("IndexedDB request failed".into(), |e| e.message()))
    }
}

async fn open() -> Result<IdbDatabase, String> {
    let factory = web_sys::window().ok_or("no window")?.indexed_db().map_err(js_error)?.ok_or("this browser has no IndexedDB")?;
    let open: IdbOpenDbRequest = factory.open_with_u32(DB_NAME, 1).map_err(js_error)?;
    let upgrade = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
        let db = e
            .target()
            .and_then(|t| t.dyn_into::<IdbOpenDbRequest>().ok())
            .and_then(|r| r.result().ok())
            .and_then(|r| r.dyn_into::<IdbDatabase>().ok());
        if let Some(db) = db {
            let _ = db.create_object_store(STORE);
        }
    });
    open.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
    let db = finish(&open).await?;
    open.set_onupgradeneeded(None);
    db.dyn_into::<IdbDatabase>().map_err(|_| "IndexedDB gave no database".to_string())
}

/// The stored key, if this browser has been a Scout.
pub async fn load() -> Result<Option<Keypair>, String> {
    let db = open().await?;
    let store = db.transaction_with_str(STORE).map_err(js_error)?.object_store(STORE).map_err(js_error)?;
    let value = finish(&store.get(&JsValue::from_str(KEY)).map_err(js_error)?).await?;
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    let bytes = value.dyn_into::<Uint8Array>().map_err(|_| "the stored key is not bytes".to_string())?.to_vec();
    Keypair::from_protobuf_encoding(&bytes).map(Some).map_err(|e| format!("the stored key is damaged: {e}"))
}

/// The stored key, made and stored first if there is none.
pub async fn load_or_create() -> Result<Keypair, String> {
    if let Some(key) = load().await? {
        return Ok(key);
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| e.to_string())?;
    let db = open().await?;
    let txn = db.transaction_with_str_and_mode(STORE, IdbTransactionMode::Readwrite).map_err(js_error)?;
    let store = txn.object_store(STORE).map_err(js_error)?;
    finish(&store.put_with_key(&Uint8Array::from(bytes.as_slice()), &JsValue::from_str(KEY)).map_err(js_error)?).await?;
    Ok(key)
}

/// A fresh proof of `key` for the Oracle `oracle_peer_id`.
pub fn proof(key: &Keypair, oracle_peer_id: &str) -> String {
    let mut nonce = [0u8; 16];
    if let Some(crypto) = web_sys::window().and_then(|w| w.crypto().ok()) {
        let _ = crypto.get_random_values_with_u8_array(&mut nonce);
    }
    shard_shared::trust::sign_proof(key, oracle_peer_id, js_sys::Date::now() as u64, nonce)
}
