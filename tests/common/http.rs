//! HTTP for the tests, through hyper's client.

use super::*;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
    /// Asserts the status code (showing the body on failure).
    pub fn assert_status(&self, status: u16) {
        assert_eq!(self.status, status, "HTTP status; body: {}", self.text());
    }
    /// Asserts status and an error body `{"error":code,"message":...}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "HTTP status; body: {}", self.text());
        let v = self.json();
        assert_eq!(v["error"], code, "error code in {v}");
        assert!(v["message"].is_string(), "error message in {v}");
    }
}

/// One HTTP/1.1 request on a connection of its own, through hyper's client
/// (bounded to 10 s). A `Host` header is added unless `headers` has one.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpResponse, String> {
    use http_body_util::{BodyExt, Full};
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let mut request = ::http::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request = request.header("host", addr.to_string());
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let body = Full::new(bytes::Bytes::copy_from_slice(body.unwrap_or_default()));
        let request = request.body(body).map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                let value = v.to_str().unwrap_or_default().to_string();
                (k.as_str().to_ascii_lowercase(), value)
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("read the body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
}
