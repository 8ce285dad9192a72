//! Static files: the web app (trunk's `dist/`) at `/`, and the Scouts' draft model at
//! `/models/{file}`. Both support range requests and conditional GETs (tower-http's
//! `ServeDir`/`ServeFile`); on top of that:
//! * the draft model carries its sha256 as a strong `ETag` (`If-None-Match` answers 304), so a
//!   browser that cached it revalidates without downloading 6 MB again;
//! * trunk's content-hashed assets are `immutable`, `index.html` is `no-cache`;
//! * precompressed `.gz` files beside the originals are served to clients that accept gzip.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

/// A file served under a fixed name with a content hash for its `ETag`.
#[derive(Debug, Clone)]
pub struct HashedFile {
    pub path: PathBuf,
    /// Lowercase hex sha256 of the file's bytes.
    pub sha256: String,
    pub bytes: u64,
}

impl HashedFile {
    fn etag(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("\"sha256-{}\"", self.sha256)).expect("hex is a valid header value")
    }
}

/// `GET /models/{file}` for the draft model: ranges, ETag, cacheable.
pub async fn serve_hashed(file: &HashedFile, req: Request<Body>) -> Response<Body> {
    let etag = file.etag();
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match ServeFile::new(&file.path).oneshot(req).await {
            Ok(r) => r.map(Body::new),
            Err(e) => match e {},
        }
    };
    if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
        let h = resp.headers_mut();
        h.insert(header::ETAG, etag);
        // Revalidate hourly; the ETag makes that a 304 while the model is unchanged.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    }
    resp
}

/// The web app's file for a request, or `None` when `dir` has no such file (the caller then
/// answers with the API's JSON 404).
pub async fn serve_app(dir: &Path, req: Request<Body>) -> Option<Response<Body>> {
    let path = req.uri().path().to_string();
    let resp = match ServeDir::new(dir).precompressed_gzip().append_index_html_on_directories(true).oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    if resp.status() == StatusCode::NOT_FOUND || resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        return None;
    }
    let mut resp = resp.map(Body::new);
    let name = path.rsplit('/').next().unwrap_or_default();
    let policy = if name.is_empty() || name.ends_with(".html") {
        "no-cache"
    } else if is_content_hashed(name) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    Some(resp)
}

/// Trunk names its outputs `stem-<16 hex digits>.ext` (or `_bg.wasm`): the name changes with
/// the content, so the file never does.
fn is_content_hashed(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default().trim_end_matches("_bg");
    stem.rsplit_once('-').is_some_and(|(_, h)| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::is_content_hashed;

    #[test]
    fn trunk_hashed_names_are_recognised() {
        assert!(is_content_hashed("shard-web-ui-5f1c0f2e8a9b7c6d.js"));
        assert!(is_content_hashed("shard-web-ui-5f1c0f2e8a9b7c6d_bg.wasm"));
        assert!(!is_content_hashed("index.html"));
        assert!(!is_content_hashed("shard-web-ui.js"));
    }
}
