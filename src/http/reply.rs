//! The gateway's HTTP answers: JSON, except the console (HTML) and
//! `/metrics` (the Prometheus text format).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

pub type Body = Full<Bytes>;

pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"error": code, "message": …}` (SPEC §4, §7).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, &json!({ "error": code, "message": message }))
}

/// An error that tells the client when to come back.
pub fn retry_later(status: StatusCode, code: &str, message: &str, secs: u64) -> Response<Body> {
    let mut response = error(status, code, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

pub fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub fn method_not_allowed(allow: &str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    response.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_str(allow).unwrap_or(HeaderValue::from_static("GET")),
    );
    response
}

pub fn html(page: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// The Prometheus text exposition format, version 0.0.4.
pub fn prometheus(text: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
