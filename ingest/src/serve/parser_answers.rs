//! The API's error body on the answers hyper gives by itself.
//!
//! When a request's head cannot be parsed (a malformed request line or header, a URI
//! over 65534 bytes, headers over hyper's read buffer or more than 100 of them),
//! hyper answers 400, 414 or 431 with an empty body and closes the connection; the
//! router never sees the request. [`ParserAnswers`] sits between hyper and the
//! socket and gives such an answer the documented error body.
//!
//! It knows them by their shape: a write that begins with the status line of a 400,
//! 414 or 431 and whose head says `content-length: 0`. The router never answers with
//! one of those (every error of ours has a body), so nothing else is touched: any
//! other write goes to the socket as it came.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// A connection's socket, with hyper's own error answers rewritten.
pub(crate) struct ParserAnswers<IO> {
    io: IO,
    /// A rewritten answer and how much of it the socket has taken.
    pending: Option<(Vec<u8>, usize)>,
}

impl<IO> ParserAnswers<IO> {
    pub fn new(io: IO) -> Self {
        ParserAnswers { io, pending: None }
    }
}

/// The answer to send in place of `written`, and how many of its bytes it replaces,
/// if `written` is exactly one of hyper's empty parse-error answers: the head alone,
/// with no header but `content-length: 0`, `date` and `connection`.
fn rewrite(written: &[u8]) -> Option<(Vec<u8>, usize)> {
    let error = match written.get(..13)? {
        b"HTTP/1.1 400 " => ApiError::BadRequest,
        b"HTTP/1.1 414 " => ApiError::UriTooLong,
        b"HTTP/1.1 431 " => ApiError::HeadersTooLarge,
        _ => return None,
    };
    let end = written.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != written.len() {
        return None;
    }
    let mut lines = written[..end - 4]
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii);
    let status_line = lines.next()?;
    let (mut empty, mut date) = (false, None);
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower == b"content-length: 0" {
            empty = true;
        } else if lower.starts_with(b"date:") {
            date = Some(line);
        } else if !lower.starts_with(b"connection:") {
            return None;
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::to_vec(&error.body()).ok()?;
    let mut answer = Vec::with_capacity(200 + body.len());
    answer.extend_from_slice(status_line);
    answer.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    answer.extend_from_slice(body.len().to_string().as_bytes());
    answer.extend_from_slice(b"\r\nx-content-type-options: nosniff\r\nconnection: close\r\n");
    if let Some(date) = date {
        answer.extend_from_slice(date);
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"\r\n");
    answer.extend_from_slice(&body);
    Some((answer, end))
}

impl<IO: AsyncWrite + Unpin> ParserAnswers<IO> {
    /// Writes out a rewritten answer, if one is waiting.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, sent)) = &mut self.pending {
            if *sent == answer.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &answer[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ParserAnswers<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ParserAnswers<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some((answer, replaced)) = rewrite(buf) {
            self.pending = Some((answer, 0));
            return Poll::Ready(Ok(replaced));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(first), None) = (written.next(), written.next()) {
            if let Some((answer, replaced)) = rewrite(first) {
                self.pending = Some((answer, 0));
                return Poll::Ready(Ok(replaced));
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(written: &[u8]) -> Option<(String, usize)> {
        rewrite(written).map(|(a, n)| (String::from_utf8(a).expect("UTF-8"), n))
    }

    #[test]
    fn hypers_empty_error_answers_get_the_error_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n";
        let (text, replaced) = answer(head).expect("rewritten");
        assert_eq!(replaced, head.len());
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(
            text.contains("\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n{"),
            "{text}"
        );
        assert!(text.ends_with(r#""code":"headers_too_large","message":"the request's headers are too large (at most 100 headers in about 400 KiB)"}}"#), "{text}");
        let (text, _) =
            answer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").expect("400");
        assert!(text.contains(r#""code":"bad_request""#), "{text}");
        let (text, _) =
            answer(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n").expect("414");
        assert!(text.contains(r#""code":"uri_too_long""#), "{text}");
    }

    #[test]
    fn every_other_write_passes_untouched() {
        // Our own 400 has a body; other statuses, partial heads and body bytes pass.
        assert!(answer(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 57\r\n\r\n").is_none());
        assert!(answer(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            answer(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n")
                .is_none()
        );
        assert!(answer(b"{\"success\":false}").is_none());
        assert!(answer(b"").is_none());
    }
}
