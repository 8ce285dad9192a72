//! Fetch from the Oracle: JSON GETs, streamed POSTs (read chunk by chunk, as SSE arrives) and
//! downloads with progress. Errors come back as text for the page to show.

use js_sys::Uint8Array;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, ReadableStreamDefaultReader, Request, RequestInit, Response};

/// Milliseconds from the page's clock.
pub fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now())
}

/// A JS error as readable text.
pub fn js_error(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

async fn fetch(request: &Request) -> Result<Response, String> {
    let window = web_sys::window().ok_or("no window")?;
    let resp = JsFuture::from(window.fetch_with_request(request)).await.map_err(js_error)?;
    Ok(resp.unchecked_into())
}

/// The error message of a non-2xx answer (OpenAI's shape), or its status.
async fn failure(resp: &Response) -> String {
    let status = resp.status();
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    let retry = resp.headers().get("retry-after").ok().flatten();
    match retry {
        Some(secs) => format!("{message} (HTTP {status}; retry in {secs} s)"),
        None => format!("{message} (HTTP {status})"),
    }
}

/// GETs JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, String> {
    get_json_as(url, None).await
}

/// GETs JSON with `Authorization: Bearer <auth>` when given.
pub async fn get_json_as<T: serde::de::DeserializeOwned>(url: &str, auth: Option<&str>) -> Result<T, String> {
    let request = Request::new_with_str(url).map_err(js_error)?;
    if let Some(a) = auth {
        request.headers().set("authorization", &format!("Bearer {a}")).map_err(js_error)?;
    }
    let resp = fetch(&request).await?;
    if !resp.ok() {
        return Err(failure(&resp).await);
    }
    let text = JsFuture::from(resp.text().map_err(js_error)?).await.map_err(js_error)?;
    serde_json::from_str(&text.as_string().unwrap_or_default()).map_err(|e| format!("{url}: {e}"))
}

/// Reads a response body chunk by chunk.
pub struct BodyReader {
    reader: ReadableStreamDefaultReader,
}

impl BodyReader {
    fn new(resp: &Response) -> Result<Self, String> {
        let body = resp.body().ok_or("the response has no body")?;
        Ok(Self { reader: body.get_reader().unchecked_into() })
    }

    /// The next chunk, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let result = JsFuture::from(self.reader.read()).await.map_err(js_error)?;
        let done = js_sys::Reflect::get(&result, &"done".into()).map_err(js_error)?.as_bool().unwrap_or(true);
        if done {
            return Ok(None);
        }
        let value = js_sys::Reflect::get(&result, &"value".into()).map_err(js_error)?;
        Ok(Some(value.unchecked_into::<Uint8Array>().to_vec()))
    }
}

/// POSTs JSON and hands back the body as a stream; `signal` aborts it (the Stop button);
/// `auth`, when given, goes as `Authorization: Bearer`.
pub async fn post_stream(
    url: &str,
    body: &serde_json::Value,
    signal: &AbortSignal,
    auth: Option<&str>,
) -> Result<BodyReader, String> {
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(&body.to_string()));
    init.set_signal(Some(signal));
    let request = Request::new_with_str_and_init(url, &init).map_err(js_error)?;
    request.headers().set("content-type", "application/json").map_err(js_error)?;
    if let Some(a) = auth {
        request.headers().set("authorization", &format!("Bearer {a}")).map_err(js_error)?;
    }
    request.headers().set("accept", "text/event-stream").map_err(js_error)?;
    let resp = fetch(&request).await?;
    if !resp.ok() {
        return Err(failure(&resp).await);
    }
    BodyReader::new(&resp)
}

/// Most bytes a download reserves before they arrive.
const MAX_RESERVE: usize = 16 << 20;

/// Downloads `url`, calling `progress(done, total)` as bytes arrive. `expected` is the size
/// the Oracle announced; more than that is refused, so a wrong file cannot fill memory.
pub async fn download(url: &str, expected: u64, mut progress: impl FnMut(u64, u64)) -> Result<Vec<u8>, String> {
    let request = Request::new_with_str(url).map_err(js_error)?;
    let resp = fetch(&request).await?;
    if !resp.ok() {
        return Err(failure(&resp).await);
    }
    let mut reader = BodyReader::new(&resp)?;
    // Grown as bytes arrive: reserving the announced size up front would let one wrong
    // number take the tab's memory. Only a modest head start is reserved.
    let mut bytes = Vec::with_capacity((expected as usize).min(MAX_RESERVE));
    progress(0, expected);
    while let Some(chunk) = reader.next().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > expected {
            return Err(format!("{url} is larger than the {expected} bytes announced"));
        }
        progress(bytes.len() as u64, expected);
    }
    Ok(bytes)
}
