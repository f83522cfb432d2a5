//! A Server-sent events client read by hand (SPEC §12): the response head,
//! then events and comments, each read with a bounded wait.

use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a read waits by default.
pub const SSE_WAIT: Duration = Duration::from_secs(10);

/// One SSE connection, read by hand.
pub struct Sse {
    pub stream: TcpStream,
    /// What was read and not yet taken: the body decoded, once the head
    /// said it is chunked.
    buf: Vec<u8>,
    /// Chunked body bytes not yet decoded (`Some` once the head said so).
    chunked: Option<Vec<u8>>,
    /// The body ended with its last chunk: the gateway ended the stream, it
    /// did not break.
    pub last_chunk: bool,
    pub status: u16,
    pub head: String,
    /// How long a read may wait.
    wait: Duration,
}

/// One event, or a comment (`: ping`).
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Vec<String>,
    pub comment: Option<String>,
    pub retry: Option<u64>,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data.join("\n")).expect("data is JSON")
    }
}

impl Sse {
    pub async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open_within(addr, target, headers, SSE_WAIT).await
    }

    /// [`Sse::open`], with reads that may wait `wait`.
    pub async fn open_within(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
        wait: Duration,
    ) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut sse = Sse {
            stream,
            buf: Vec::new(),
            status: 0,
            head: String::new(),
            wait,
            chunked: None,
            last_chunk: false,
        };
        let end = sse
            .read_until(|b| b.windows(4).position(|w| w == b"\r\n\r\n"))
            .await
            .expect("a response head");
        let head: Vec<u8> = sse.buf.drain(..end + 4).collect();
        sse.head = String::from_utf8_lossy(&head).to_lowercase();
        sse.status = sse.head[9..12].parse().unwrap();
        if sse.head.contains("\r\ntransfer-encoding: chunked\r\n") {
            sse.chunked = Some(std::mem::take(&mut sse.buf));
            sse.decode_chunks();
        }
        sse
    }

    /// Moves every complete chunk from `chunked` to `buf`; panics on bad
    /// framing.
    fn decode_chunks(&mut self) {
        let Some(raw) = self.chunked.as_mut() else {
            return;
        };
        while !self.last_chunk {
            let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_line = String::from_utf8_lossy(&raw[..eol]).to_string();
            let size = usize::from_str_radix(size_line.trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if raw.len() < eol + 2 + size + 2 {
                return;
            }
            let body = eol + 2;
            assert_eq!(
                &raw[body + size..body + size + 2],
                b"\r\n",
                "a chunk ends with CRLF"
            );
            self.buf.extend_from_slice(&raw[body..body + size]);
            raw.drain(..body + size + 2);
            self.last_chunk = size == 0;
        }
    }

    /// Reads until `found` finds something in the buffer (bounded); None
    /// at the end of the stream.
    pub async fn read_until(&mut self, found: impl Fn(&[u8]) -> Option<usize>) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = found(&self.buf) {
                return Some(at);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("the stream stalled")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            match self.chunked.as_mut() {
                Some(raw) => {
                    raw.extend_from_slice(&chunk[..n]);
                    self.decode_chunks();
                }
                None => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The body of a refusal (the whole rest of the response).
    pub async fn body(&mut self) -> Value {
        self.read_until(|_| None).await;
        serde_json::from_slice(&self.buf).expect("a JSON body")
    }

    /// The next event or comment; None when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        let end = self
            .read_until(|b| b.windows(2).position(|w| w == b"\n\n"))
            .await?;
        let block: Vec<u8> = self.buf.drain(..end + 2).collect();
        let mut event = SseEvent::default();
        for line in String::from_utf8(block).unwrap().lines() {
            if let Some(c) = line.strip_prefix(':') {
                event.comment = Some(c.trim().to_string());
            } else if let Some((field, value)) = line.split_once(": ") {
                match field {
                    "id" => event.id = Some(value.to_string()),
                    "event" => event.event = Some(value.to_string()),
                    "data" => event.data.push(value.to_string()),
                    "retry" => event.retry = Some(value.parse().expect("retry is a number")),
                    other => panic!("unknown field {other:?}"),
                }
            }
        }
        Some(event)
    }

    /// The next event that is not a comment.
    pub async fn next_event(&mut self) -> SseEvent {
        for _ in 0..100 {
            match self.next().await {
                Some(e) if e.comment.is_some() => continue,
                Some(e) => return e,
                None => panic!("the stream ended"),
            }
        }
        panic!("only comments")
    }
}
