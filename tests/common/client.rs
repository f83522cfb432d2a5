//! The WebSocket client tests talk to the gateway with.

use super::*;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Options for [`Gateway::connect_raw`].
#[derive(Default, Clone, Debug)]
pub struct ConnectOpts {
    /// Sent as `?token=`.
    pub token: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Extra query parameters (already URL-safe).
    pub query: Vec<(String, String)>,
}

impl ConnectOpts {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn token(t: &str) -> Self {
        ConnectOpts {
            token: Some(t.to_string()),
            ..Default::default()
        }
    }
    pub fn query(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.to_string(), v.to_string()));
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

/// Describes a handshake error, including the body of an HTTP refusal.
pub fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!(
            "HTTP {} {:?}",
            resp.status(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        ),
        other => format!("{other}"),
    }
}

/// An HTTP refusal of a WebSocket handshake.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A header's value from lower-cased `(name, value)` pairs.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

impl Refusal {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {:?}", self.body))
    }
}

/// Expects the handshake to have been refused with an HTTP status.
pub fn expect_refusal(r: Result<Client, tungstenite::Error>) -> Refusal {
    match r {
        Ok(_) => panic!("expected the handshake to be refused, but it was accepted"),
        Err(tungstenite::Error::Http(resp)) => Refusal {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        v.to_str().unwrap_or("").to_string(),
                    )
                })
                .collect(),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        },
        Err(e) => panic!("expected an HTTP refusal, got error: {e}"),
    }
}

/// What arrived when reading a frame.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Close(Option<u16>),
    /// The stream ended (EOF or error) without a Close frame.
    End(String),
}

pub struct Client {
    pub ws: Ws,
    /// Handshake response headers (lower-cased names).
    pub response_headers: Vec<(String, String)>,
}

impl Client {
    pub fn response_header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.response_headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Looks at the bytes waiting in the kernel socket buffer without
    /// consuming them (so tungstenite does not read, and does not answer
    /// pings). Returns `None` when nothing is waiting, `Some(empty)` at EOF.
    pub async fn peek_raw(&self) -> Option<Vec<u8>> {
        let MaybeTlsStream::Plain(s) = self.ws.get_ref() else {
            panic!("only plain TCP is used in tests");
        };
        let mut buf = vec![0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_millis(20), s.peek(&mut buf)).await {
            Err(_) => None,
            Ok(Ok(n)) => {
                buf.truncate(n);
                Some(buf)
            }
            Ok(Err(_)) => Some(Vec::new()),
        }
    }

    /// Waits (bounded) until the server has sent a Close frame or ended the
    /// stream, by peeking at the raw socket without reading it. Returns the
    /// close code seen in the raw bytes (`None` if the stream just ended).
    pub async fn wait_server_close_unread(&self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.peek_raw().await {
                Some(b) if b.is_empty() => return None,
                Some(b) => {
                    if let Some(code) = raw_close_code(&b) {
                        return code;
                    }
                }
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "the server did not close the connection within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads the next frame (Pongs are skipped). `None` on timeout.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(m) => m,
            };
            return Some(match msg {
                None => Frame::End("stream ended".into()),
                Some(Err(e)) => Frame::End(format!("error: {e}")),
                Some(Ok(Message::Text(t))) => Frame::Text(t.as_str().to_string()),
                Some(Ok(Message::Binary(b))) => Frame::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_))) => Frame::Ping,
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(f))) => Frame::Close(f.map(|f| u16::from(f.code))),
            });
        }
    }

    /// The next text frame (Pings skipped); panics on anything else.
    pub async fn next_text_within(&mut self, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(Frame::Text(t)) => return t,
                Some(Frame::Ping) => continue,
                None => panic!("expected a text frame within {timeout:?}, got nothing"),
                Some(other) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn next_text(&mut self) -> String {
        self.next_text_within(FRAME_TIMEOUT).await
    }

    pub async fn next_json(&mut self) -> Value {
        let t = self.next_text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t:?}"))
    }

    /// Reads the CONNECTED frame and checks its shape and user id.
    pub async fn expect_connected(&mut self, user: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(
            v["type"], "CONNECTED",
            "first frame should be CONNECTED: {v}"
        );
        let d = &v["data"];
        assert_eq!(d["user_id"], user, "CONNECTED user_id: {v}");
        assert!(
            d["connection_id"].as_str().is_some_and(|s| !s.is_empty()),
            "CONNECTED connection_id: {v}"
        );
        assert!(
            d["instance"].as_str().is_some_and(|s| !s.is_empty()),
            "CONNECTED instance: {v}"
        );
        assert!(
            d["heartbeat_secs"].is_u64(),
            "CONNECTED heartbeat_secs: {v}"
        );
        d.clone()
    }

    /// Asserts that nothing but (optionally) pings arrives for `window`.
    /// Used only where the point is "nothing arrives"; prefer ordering
    /// checks (publish a marker, expect the marker next) elsewhere.
    pub async fn expect_silence(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_frame(left).await {
                None | Some(Frame::Ping) => continue,
                Some(f) => panic!("expected nothing, got {f:?}"),
            }
        }
    }

    /// Reads frames until a Close frame (or end of stream); returns the texts
    /// seen before it and the close code (`None` for a Close without code or
    /// a stream that ended without Close).
    pub async fn read_until_close(
        &mut self,
        timeout: Duration,
    ) -> (Vec<String>, Option<u16>, bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut texts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                None => panic!(
                    "no Close within {timeout:?} (after {} text frames; last: {:?})",
                    texts.len(),
                    texts
                        .last()
                        .map(|t: &String| t.chars().take(200).collect::<String>())
                ),
                Some(Frame::Text(t)) => texts.push(t),
                Some(Frame::Binary(_)) | Some(Frame::Ping) => continue,
                Some(Frame::Close(code)) => {
                    // Keep polling so tungstenite sends the Close reply and
                    // the server can finish the closing handshake.
                    let until = tokio::time::Instant::now() + FRAME_TIMEOUT;
                    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, self.ws.next()).await
                    {
                    }
                    return (texts, code, true);
                }
                Some(Frame::End(_)) => return (texts, None, false),
            }
        }
    }

    /// Expects a Close frame with `code` as the next non-ping frame.
    pub async fn expect_close(&mut self, code: u16) {
        match self.read_until_close(FRAME_TIMEOUT).await {
            (texts, _, _) if !texts.is_empty() => {
                panic!("expected Close {code}, got text frames first: {texts:?}")
            }
            (_, Some(c), true) => assert_eq!(c, code, "close code"),
            (_, None, true) => panic!("expected Close {code}, got a Close frame without code"),
            (_, _, false) => {
                panic!("expected Close {code}, the stream ended without a Close frame")
            }
        }
    }

    /// Expects `{"type":"ERROR","data":{"code":code,...}}` then Close `close`.
    pub async fn expect_error_then_close(&mut self, code: &str, close: u16) {
        let v = self.next_json().await;
        assert_eq!(v["type"], "ERROR", "expected an ERROR frame, got {v}");
        assert_eq!(v["data"]["code"], code, "ERROR code in {v}");
        assert!(
            v["data"]["message"].is_string(),
            "ERROR frame should carry a message: {v}"
        );
        self.expect_close(close).await;
    }

    /// Expects an ERROR frame with `code` (connection stays open).
    pub async fn expect_error(&mut self, code: &str) {
        let v = self.next_json().await;
        assert_eq!(v["type"], "ERROR", "expected an ERROR frame, got {v}");
        assert_eq!(v["data"]["code"], code, "ERROR code in {v}");
        assert!(v["data"]["message"].is_string(), "ERROR message in {v}");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send text frame");
    }

    /// Sends a text frame, as a browser's `send` does: whether the
    /// connection is still there is for the reads to say.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::text(text.to_string())).await.is_ok()
    }

    /// Sends a PING and expects the matching PONG.
    pub async fn ping_pong(&mut self, ts: i64) {
        self.send_text(&format!(r#"{{"type":"PING","ts":{ts}}}"#))
            .await;
        let v = self.next_json().await;
        assert_eq!(
            v,
            serde_json::json!({"type":"PONG","data":{"ts":ts}}),
            "PONG for PING ts={ts}"
        );
    }

    /// Closes politely and waits (bounded) for the server's Close / EOF.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
    }
}

/// Scans unmasked server frames in `buf`; returns `Some(code)` for the first
/// Close frame (`Some(None)` if it carries no code), `None` if there is none.
pub fn raw_close_code(buf: &[u8]) -> Option<Option<u16>> {
    let mut i = 0;
    while i + 2 <= buf.len() {
        let opcode = buf[i] & 0x0f;
        let mut len = (buf[i + 1] & 0x7f) as usize;
        let mut hdr = 2;
        if len == 126 {
            if i + 4 > buf.len() {
                return None;
            }
            len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
            hdr = 4;
        } else if len == 127 {
            if i + 10 > buf.len() {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i + 2..i + 10]);
            len = u64::from_be_bytes(b) as usize;
            hdr = 10;
        }
        if opcode == 0x8 {
            let p = i + hdr;
            return Some(
                (len >= 2 && p + 2 <= buf.len()).then(|| u16::from_be_bytes([buf[p], buf[p + 1]])),
            );
        }
        i += hdr + len;
    }
    None
}
