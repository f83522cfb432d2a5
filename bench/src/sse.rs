//! The SSE client's protocol, without I/O: the response head of `GET /sse`
//! and an incremental parser of the event stream that follows it, with or
//! without HTTP/1.1 chunked transfer coding (SPEC §12 says chunked; a body
//! that runs to the connection's close reads the same).
//!
//! An event ends at a blank line. One whose `event:` is `BENCH` (and that
//! has data) is a delivery, its latency taken from the `"ts":` in its
//! `data:`; `CONNECTED` marks the stream ready; a `: ping` comment is a
//! heartbeat; anything else is ignored. Lines end with LF or CRLF (the
//! gateway writes LF; a lone CR is not a line end here).

use crate::client::payload_ts_bytes;

/// The longest line kept while waiting for its end (the gateway drops
/// messages over 1 MiB).
const MAX_LINE: usize = 2 * 1024 * 1024;
/// Hex digits in a chunk-size line, at most (2^40 bytes).
const MAX_SIZE_DIGITS: u32 = 10;

/// What the `/sse` response head says.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub chunked: bool,
}

impl Head {
    /// `head`: the status line and headers, through the blank line.
    pub fn parse(head: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let code = status.split(' ').nth(1).unwrap_or_default();
        if !status.starts_with("HTTP/1.") || code != "200" {
            return Err(format!("expected 200, got {status:?}"));
        }
        let (mut chunked, mut event_stream) = (false, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.split(',').any(|c| c.trim() == "chunked");
            } else if name.eq_ignore_ascii_case("content-type") {
                event_stream = value.starts_with("text/event-stream");
            }
        }
        if !event_stream {
            return Err("the response is not text/event-stream".into());
        }
        Ok(Self { chunked })
    }
}

/// What the stream said, as the parser reads it.
#[derive(Debug, PartialEq)]
pub enum SseEvent {
    /// `event: CONNECTED`: the stream is ready.
    Connected,
    /// `event: BENCH`, with the `ts` of its data when it has one.
    Delivery(Option<u64>),
    /// A `: ping` comment.
    Ping,
    /// The body ended (the last chunk).
    End,
    /// Not a stream this parser can read; nothing more is parsed.
    Broken(&'static str),
}

/// Where the parser is in the chunked coding.
#[derive(Debug, Clone, Copy)]
enum Chunking {
    /// No transfer coding: every byte is the stream.
    Identity,
    /// A chunk-size line: the size so far, its digits, and whether an
    /// extension (`;…`) or the CR has begun.
    Size { size: u64, digits: u32, tail: bool },
    /// Stream bytes left in this chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk (trailers are skipped), or after `Broken`.
    Done,
}

/// The kind of event being read, from its `event:` line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// No `event:` yet (the type would be `message`).
    Unnamed,
    Connected,
    Bench,
    Other,
}

/// An incremental parser: feed it the body's bytes as they arrive.
pub struct Parser {
    chunking: Chunking,
    /// The start of a line whose end has not arrived yet.
    line: Vec<u8>,
    kind: Kind,
    has_data: bool,
    ts: Option<u64>,
}

impl Parser {
    pub fn new(chunked: bool) -> Self {
        let chunking = if chunked {
            Chunking::Size {
                size: 0,
                digits: 0,
                tail: false,
            }
        } else {
            Chunking::Identity
        };
        Self {
            chunking,
            line: Vec::new(),
            kind: Kind::Unnamed,
            has_data: false,
            ts: None,
        }
    }

    /// Parses `bytes`, calling `on` for each event, comment and end.
    pub fn feed(&mut self, mut bytes: &[u8], on: &mut impl FnMut(SseEvent)) {
        // Bounded: every pass consumes at least one byte or returns.
        while !bytes.is_empty() {
            match self.chunking {
                Chunking::Identity => {
                    self.stream(bytes, on);
                    return;
                }
                Chunking::Done => return,
                Chunking::Data(left) => {
                    let take = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    let (data, rest) = bytes.split_at(take);
                    self.stream(data, on);
                    if matches!(self.chunking, Chunking::Done) {
                        return;
                    }
                    let left = left - take as u64;
                    self.chunking = if left == 0 {
                        Chunking::DataEnd
                    } else {
                        Chunking::Data(left)
                    };
                    bytes = rest;
                }
                Chunking::DataEnd => {
                    match bytes[0] {
                        b'\r' => {}
                        b'\n' => {
                            self.chunking = Chunking::Size {
                                size: 0,
                                digits: 0,
                                tail: false,
                            }
                        }
                        _ => return self.broken("no CRLF after a chunk", on),
                    }
                    bytes = &bytes[1..];
                }
                Chunking::Size { size, digits, tail } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    let next = match (b, tail) {
                        (b'\n', _) if digits == 0 => {
                            return self.broken("a chunk-size line without a size", on)
                        }
                        (b'\n', _) if size == 0 => {
                            self.chunking = Chunking::Done;
                            on(SseEvent::End);
                            return;
                        }
                        (b'\n', _) => Chunking::Data(size),
                        (_, true) => Chunking::Size { size, digits, tail },
                        (b';' | b'\r' | b' ' | b'\t', false) => Chunking::Size {
                            size,
                            digits,
                            tail: true,
                        },
                        (_, false) => {
                            let Some(digit) = char::from(b).to_digit(16) else {
                                return self.broken("a chunk size that is not hex", on);
                            };
                            if digits == MAX_SIZE_DIGITS {
                                return self.broken("a chunk size too large", on);
                            }
                            Chunking::Size {
                                size: size * 16 + u64::from(digit),
                                digits: digits + 1,
                                tail,
                            }
                        }
                    };
                    self.chunking = next;
                }
            }
        }
    }

    fn broken(&mut self, why: &'static str, on: &mut impl FnMut(SseEvent)) {
        self.chunking = Chunking::Done;
        self.line = Vec::new();
        on(SseEvent::Broken(why));
    }

    /// Bytes of the event stream itself: split into lines.
    fn stream(&mut self, bytes: &[u8], on: &mut impl FnMut(SseEvent)) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = (&rest[..end], &rest[end + 1..]);
            if self.line.is_empty() {
                self.line_done(line, on);
            } else {
                let mut whole = std::mem::take(&mut self.line);
                whole.extend_from_slice(line);
                self.line_done(&whole, on);
                whole.clear();
                // Keeps the allocation for the next split line.
                self.line = whole;
            }
            rest = after;
        }
        if self.line.len() + rest.len() > MAX_LINE {
            return self.broken("a line longer than 2 MiB", on);
        }
        self.line.extend_from_slice(rest);
    }

    /// One line of the stream, without its LF.
    fn line_done(&mut self, line: &[u8], on: &mut impl FnMut(SseEvent)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                match self.kind {
                    Kind::Bench => on(SseEvent::Delivery(self.ts)),
                    Kind::Connected => on(SseEvent::Connected),
                    Kind::Unnamed | Kind::Other => {}
                }
            }
            self.kind = Kind::Unnamed;
            self.has_data = false;
            self.ts = None;
            return;
        }
        if let Some(comment) = line.strip_prefix(b":") {
            if comment.trim_ascii() == b"ping" {
                on(SseEvent::Ping);
            }
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => {
                self.kind = match value {
                    b"BENCH" => Kind::Bench,
                    b"CONNECTED" => Kind::Connected,
                    _ => Kind::Other,
                }
            }
            b"data" => {
                self.has_data = true;
                if self.ts.is_none() {
                    self.ts = payload_ts_bytes(value);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "id: 01JCONN\nevent: CONNECTED\ndata: {\"type\":\"CONNECTED\",\"id\":\"01JCONN\",\"data\":{\"heartbeat_secs\":25}}\n\n\
        : ping\n\n\
        event: BENCH\ndata: {\"type\":\"BENCH\",\"ts\":42,\"seq\":0,\"pad\":\"xx\"}\n\n\
        id: 01JX\nevent: OTHER\ndata: {\"type\":\"OTHER\",\"ts\":1}\n\n\
        event: BENCH\r\ndata: {\"type\":\"BENCH\",\"ts\":43}\r\n\r\n\
        event: BENCH\n\n\
        event: BENCH\ndata: {\"type\":\"BENCH\"}\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent::Connected,
            SseEvent::Ping,
            SseEvent::Delivery(Some(42)),
            SseEvent::Delivery(Some(43)),
            SseEvent::Delivery(None),
        ]
    }

    fn parse_in_pieces(chunked: bool, body: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = Parser::new(chunked);
        let mut events = Vec::new();
        for part in body.chunks(piece) {
            parser.feed(part, &mut |e| events.push(e));
        }
        events
    }

    /// `STREAM` in chunks of `size` bytes, with an extension on the first
    /// and the last chunk.
    fn chunked(size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, part) in STREAM.as_bytes().chunks(size).enumerate() {
            let ext = if i == 0 { ";x=1" } else { "" };
            out.extend_from_slice(format!("{:X}{ext}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[test]
    fn counts_bench_events_only() {
        for piece in [1, 2, 3, 7, 64, STREAM.len()] {
            assert_eq!(
                parse_in_pieces(false, STREAM.as_bytes(), piece),
                expected(),
                "{piece}"
            );
        }
    }

    #[test]
    fn reads_chunked_bodies_whatever_the_splits() {
        for size in [1, 5, 16, 100, STREAM.len()] {
            let body = chunked(size);
            for piece in [1, 3, 11, body.len()] {
                let mut want = expected();
                want.push(SseEvent::End);
                assert_eq!(parse_in_pieces(true, &body, piece), want, "{size}/{piece}");
            }
        }
    }

    #[test]
    fn refuses_what_is_not_chunked() {
        let events = parse_in_pieces(true, b"zz\r\nabc", 100);
        assert_eq!(
            events,
            vec![SseEvent::Broken("a chunk size that is not hex")]
        );
        let events = parse_in_pieces(true, b"3\r\nabcX", 100);
        assert_eq!(events, vec![SseEvent::Broken("no CRLF after a chunk")]);
        let events = parse_in_pieces(true, b"fffffffffff\r\n", 100);
        assert_eq!(events, vec![SseEvent::Broken("a chunk size too large")]);
    }

    #[test]
    fn heads() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n\r\n";
        assert_eq!(Head::parse(ok), Ok(Head { chunked: false }));
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(Head::parse(chunked), Ok(Head { chunked: true }));
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\r\n";
        assert!(Head::parse(refused).is_err());
        let json = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
        assert!(Head::parse(json).is_err());
    }
}
