//! Just enough HTTP/1.x for a scraper and a balancer's health check: the request head is
//! read up to a size bound, only its request line matters, every answer closes the
//! connection (so no keep-alive state, no body reading).

/// The largest request head we read; past it the answer is 431.
/// A scrape's `Content-Type`: the Prometheus text exposition format the metrics are written in.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub const MAX_REQUEST: usize = 8 * 1024;

/// What a request head asks for, as far as the endpoint cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET` (or `HEAD`, answered without its body) of a path, query string removed.
    Get { path: String, head: bool },
    /// Another method on a well-formed request line.
    OtherMethod,
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// The head is not complete yet (and under the size bound).
    Incomplete,
    Done(Request),
    /// Not HTTP, or over [`MAX_REQUEST`]: answer with this status and close.
    Bad(u16),
}

/// Looks for a complete head (ending in an empty line) in `received` and reads its
/// request line: `METHOD SP TARGET SP HTTP/1.x`.
pub fn parse(received: &[u8]) -> Parse {
    let Some(end) = head_end(received) else {
        return if received.len() >= MAX_REQUEST { Parse::Bad(431) } else { Parse::Incomplete };
    };
    if end > MAX_REQUEST {
        return Parse::Bad(431);
    }
    let line_end = received.iter().position(|&b| b == b'\n').unwrap_or(end);
    let Ok(line) = std::str::from_utf8(&received[..line_end]) else { return Parse::Bad(400) };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Bad(400);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Parse::Bad(400);
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    match method {
        "GET" => Parse::Done(Request::Get { path, head: false }),
        "HEAD" => Parse::Done(Request::Get { path, head: true }),
        _ => Parse::Done(Request::OtherMethod),
    }
}

/// Where the head ends (just past its empty line), accepting bare `\n` line ends too.
fn head_end(received: &[u8]) -> Option<usize> {
    let crlf = received.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
    let lf = received.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A whole response, ready to write: status line, headers, `Connection: close`, body.
pub fn response(status: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_is_read_once_its_head_is_complete() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), Parse::Incomplete);
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parse::Done(Request::Get { path: "/metrics".into(), head: false })
        );
        assert_eq!(
            parse(b"HEAD /health HTTP/1.0\n\n"),
            Parse::Done(Request::Get { path: "/health".into(), head: true })
        );
        assert_eq!(parse(b"POST /health HTTP/1.1\r\n\r\n"), Parse::Done(Request::OtherMethod));
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        assert_eq!(parse(b"\x16\x03\x01\x02\x00\x01\r\n\r\n"), Parse::Bad(400));
        assert_eq!(parse(b"GET /a b HTTP/1.1\r\n\r\n"), Parse::Bad(400));
        assert_eq!(parse(b"GET metrics HTTP/1.1\r\n\r\n"), Parse::Bad(400));
        assert_eq!(parse(&vec![b'a'; MAX_REQUEST]), Parse::Bad(431));
        assert_eq!(parse(&vec![b'a'; MAX_REQUEST - 1]), Parse::Incomplete);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let text = String::from_utf8(response(503, "text/plain", "stopping\n", false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Length: 9\r\n") && text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nstopping\n"));
        let head = response(200, "text/plain", "ok\n", true);
        assert!(head.ends_with(b"\r\n\r\n"), "HEAD gets no body");
    }
}
