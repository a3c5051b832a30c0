//! HTTP error answers: one JSON body, `{"error": code, "message": text}`, for every refusal of every endpoint.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A JSON error body: `{"error": code, "message": message}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// One generic answer for every authentication failure, so a prober learns nothing.
pub fn unauthorized() -> Response {
    json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "authentication required",
    )
}

/// 503 `unavailable` with `Retry-After`: every refusal that a retry can cure
/// (warming up, draining, full, the log briefly out of reach) says when to retry.
pub fn unavailable(message: &str) -> Response {
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}
