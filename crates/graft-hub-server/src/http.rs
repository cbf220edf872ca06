//! Minimal HTTP/1.1 plumbing: one request per connection, parsed by hand so that
//! fault injection keeps full control of what goes on the wire.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crate::FaultKind;

/// Largest request head (request line + headers) we accept.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (only control POSTs have one).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Bodies are streamed in chunks of this size so large files never sit in memory.
const CHUNK: usize = 64 * 1024;

pub(crate) struct Request {
    pub method: String,
    /// The raw request target (path and query), as sent.
    pub target: String,
    /// Raw (still percent-encoded) path, without the query.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Decoded query parameter (first occurrence).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(&k.replace('+', " "))?;
            if k == name {
                percent_decode(&v.replace('+', " "))
            } else {
                None
            }
        })
    }
}

pub(crate) enum ReadError {
    /// Socket error or the peer went away: nothing to answer.
    Io,
    /// Malformed request: 400.
    Bad(&'static str),
    /// Head or body over the limit: 413.
    TooLarge(&'static str),
}

/// Reads one request (head plus a Content-Length body) from the socket.
pub(crate) fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find_subslice(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::TooLarge("Request head too large"));
        }
        let n = stream.read(&mut tmp).map_err(|_| ReadError::Io)?;
        if n == 0 {
            // A peer that sent a partial head and closed still deserves a 400 if it sent anything.
            return Err(if buf.is_empty() {
                ReadError::Io
            } else {
                ReadError::Bad("Incomplete request")
            });
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::TooLarge("Request head too large"));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Bad("Request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(ReadError::Bad("Malformed request line")),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Bad("Malformed method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Bad("Unsupported HTTP version"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ReadError::Bad("Malformed request target"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(ReadError::Bad("Malformed header"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ReadError::Bad("Malformed header name"));
        }
        if value.bytes().any(|b| b < b' ' && b != b'\t') {
            return Err(ReadError::Bad("Malformed header value"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut content_length: Option<usize> = None;
    for (k, v) in &headers {
        if k.eq_ignore_ascii_case("transfer-encoding") {
            // Only control POSTs carry bodies and they are small; chunked is not worth supporting.
            return Err(ReadError::Bad("Transfer-Encoding is not supported"));
        }
        if k.eq_ignore_ascii_case("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| ReadError::Bad("Malformed Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(ReadError::Bad("Conflicting Content-Length"));
            }
            content_length = Some(n);
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(ReadError::TooLarge("Request body too large"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < body_len {
        let n = stream.read(&mut tmp).map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Bad("Incomplete body"));
        }
        body.extend_from_slice(&tmp[..n]);
    }
    body.truncate(body_len);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Percent-decodes; None for a broken escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = (*bytes.get(i + 1)? as char).to_digit(16)?;
            let lo = (*bytes.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything except RFC 3986 unreserved characters (and `/` when `keep_slash`).
pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Outcome of a `Range` header against a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeOutcome {
    /// No usable range: answer 200 with the whole body.
    Full,
    /// Inclusive byte range: answer 206.
    Partial(u64, u64),
    /// Start at or past the end: answer 416.
    Unsatisfiable,
}

/// Single-range parsing per RFC 9110; anything malformed or multi-range is ignored (200).
pub(crate) fn parse_range(header: Option<&str>, size: u64) -> RangeOutcome {
    let Some(h) = header else {
        return RangeOutcome::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Full;
    };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = all_digits(b).then(|| b.parse::<u64>().ok()).flatten() else {
            return RangeOutcome::Full;
        };
        if n == 0 || size == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        return RangeOutcome::Partial(size.saturating_sub(n), size - 1);
    }
    let Some(start) = all_digits(a).then(|| a.parse::<u64>().ok()).flatten() else {
        return RangeOutcome::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match all_digits(b).then(|| b.parse::<u64>().ok()).flatten() {
            Some(e) => e,
            None => return RangeOutcome::Full,
        }
    };
    if end < start {
        return RangeOutcome::Full;
    }
    if start >= size {
        return RangeOutcome::Unsatisfiable;
    }
    // Clients (hf-hub 0.4) ask for one past the last byte; RFC 9110 says clamp.
    RangeOutcome::Partial(start, end.min(size - 1))
}

pub(crate) enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of the file starting at `start`; streamed from disk.
    File {
        path: PathBuf,
        start: u64,
        len: u64,
    },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
    /// Offset of the first body byte within the underlying resource (for `Corrupt`).
    fn start(&self) -> u64 {
        match self {
            Body::File { start, .. } => *start,
            _ => 0,
        }
    }
}

pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.into()));
    }
    pub fn body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(Body::Bytes(value.to_string().into_bytes()))
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Header values may carry request data (paths, revisions): never let CR/LF through.
fn sanitize_header_value(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Writes the response; body faults (DropAfter, Corrupt, Slow) are applied here.
/// Returns Ok(false) when the body was deliberately cut short.
pub(crate) fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    head_only: bool,
    fault: Option<&FaultKind>,
) -> io::Result<bool> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(&sanitize_header_value(v));
        head.push_str("\r\n");
    }
    // RFC 9110 forbids Content-Length on 204; on 304 it would have to be the 200's length.
    if resp.status != 204 && resp.status != 304 {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    if head_only || resp.status == 304 || resp.status == 204 {
        stream.flush()?;
        return Ok(true);
    }

    let total = resp.body.len();
    let mut limit = total;
    let mut chunk = CHUNK;
    let mut delay = None;
    let mut corrupt = None;
    match fault {
        Some(FaultKind::DropAfter { bytes }) => limit = (*bytes).min(total),
        Some(FaultKind::Slow { chunk: c, delay_ms }) => {
            // A zero chunk would never make progress.
            chunk = if *c == 0 { CHUNK } else { *c };
            delay = Some(Duration::from_millis(*delay_ms));
        }
        Some(FaultKind::Corrupt { offset }) => corrupt = Some(*offset),
        _ => {}
    }

    let base = resp.body.start();
    let mut file = match &resp.body {
        Body::File { path, start, .. } => {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(*start))?;
            Some(f)
        }
        _ => None,
    };
    let bytes: &[u8] = match &resp.body {
        Body::Bytes(b) => b,
        _ => &[],
    };
    // Pieces never exceed CHUNK (bounded memory) nor cross a Slow chunk boundary.
    let mut buf = vec![0u8; chunk.min(CHUNK)];
    let mut sent: u64 = 0;
    while sent < limit {
        let into_chunk = (sent % chunk as u64) as usize;
        if into_chunk == 0 {
            if let Some(d) = delay {
                thread::sleep(d);
            }
        }
        let want = ((limit - sent) as usize)
            .min(chunk - into_chunk)
            .min(buf.len());
        let n = match &mut file {
            Some(f) => {
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    // File shrank under us: close early rather than pad with junk.
                    return Ok(false);
                }
                n
            }
            None => {
                let s = sent as usize;
                buf[..want].copy_from_slice(&bytes[s..s + want]);
                want
            }
        };
        let piece = &mut buf[..n];
        let abs = base + sent;
        if let Some(off) = corrupt {
            if off >= abs && off < abs + n as u64 {
                piece[(off - abs) as usize] ^= 0xff;
            }
        }
        stream.write_all(piece)?;
        sent += n as u64;
    }
    stream.flush()?;
    Ok(limit == total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeOutcome::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-0"), 10), Partial(0, 0));
        assert_eq!(parse_range(Some("bytes=2-"), 10), Partial(2, 9));
        assert_eq!(parse_range(Some("bytes=5-10"), 10), Partial(5, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-3"), 10), Partial(7, 9));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }

    #[test]
    fn percent() {
        assert_eq!(
            percent_decode("refs%2Fpr%2F1").as_deref(),
            Some("refs/pr/1")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_encode("a b/c", true), "a%20b/c");
        assert_eq!(percent_encode("a b/c", false), "a%20b%2Fc");
    }
}
