//! The page and client served at `/`: built into the binary, or read from a folder (`server.static_dir`).
//!
//! Embedded by default, so the demo page is there whatever the working
//! directory; a folder set in `server.static_dir` replaces it (to serve your
//! own page, or edit this one without a rebuild); `static_dir = ""` serves none.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

/// `static/` as it was when the binary was built (in debug builds too, so a
/// test binary behaves like a release one).
#[derive(RustEmbed)]
#[folder = "static/"]
struct Embedded;

/// Serves the embedded file at `uri`'s path (`/` is `index.html`), with an
/// ETag from its hash so browsers revalidate instead of downloading again.
pub async fn embedded(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    let Some(file) = Embedded::get(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = Response::new(Body::from(file.data.into_owned()));
    let headers = response.headers_mut();
    if let Ok(mime) = HeaderValue::from_str(file.metadata.mimetype()) {
        headers.insert(header::CONTENT_TYPE, mime);
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_and_the_client_are_built_in() {
        let page = embedded("/".parse().unwrap(), HeaderMap::new()).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html");
        let js = embedded("/pushgate.js".parse().unwrap(), HeaderMap::new()).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert!(js.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .contains("javascript"));
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, js.headers()[header::ETAG].clone());
        let cached = embedded("/pushgate.js".parse().unwrap(), again).await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        let missing = embedded("/nope.html".parse().unwrap(), HeaderMap::new()).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let escape = embedded("/../Cargo.toml".parse().unwrap(), HeaderMap::new()).await;
        assert_eq!(escape.status(), StatusCode::NOT_FOUND);
    }
}
