//! The HTTP server loop, with the limits `axum::serve` does not have: a deadline
//! for a request's headers, one for its body, and a cap on open connections.
//!
//! A client that sends its headers or its body a byte at a time holds a connection
//! (a socket, a task, buffers) for as long as it likes unless something closes it:
//! hyper closes a connection whose headers are not complete within
//! `HEADER_READ_TIMEOUT`, and [`body_deadline`] fails a body not complete within
//! `BODY_READ_TIMEOUT` (the handler answers 408 and hyper closes the connection,
//! since the body was not read to its end). hyper's own answers to a head it cannot
//! parse get the API's error body from [`parser_answers`]. At `MAX_CONNECTIONS` open connections
//! the server stops accepting until one closes; the kernel's backlog holds the rest.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::Service;

mod parser_answers;

use parser_answers::ParserAnswers;

/// How long a connection stays open while accepting fails (e.g. out of file
/// descriptors) before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The server's limits (`HEADER_READ_TIMEOUT`, `BODY_READ_TIMEOUT`,
/// `MAX_CONNECTIONS`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` completes, then stops accepting and
/// waits for the open connections to finish their requests (idle ones are closed).
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_read_timeout,
        body_deadline,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(stop);
    let mut warned = false;
    loop {
        // A slot first, so that at the cap nothing more is accepted.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        if slots.available_permits() == 0 && !warned {
            tracing::warn!(
                max_connections = limits.max_connections,
                "MAX_CONNECTIONS reached: new connections wait until one closes"
            );
        }
        warned = slots.available_permits() == 0;
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let connection = graceful
            .watch(builder.serve_connection(TokioIo::new(ParserAnswers::new(stream)), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Gives the request's body `timeout` from now to arrive whole. An answer given
/// before the body was read to its end (413, 415, 401, a timeout) says
/// `Connection: close`: hyper closes such a connection anyway, and a client told so
/// does not send its next request on it.
async fn body_deadline(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let read = Arc::new(AtomicBool::new(http_body::Body::is_end_stream(
        request.body(),
    )));
    let request = request.map(|body| {
        Body::new(Deadline {
            body,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            read: read.clone(),
        })
    });
    let mut response = next.run(request).await;
    if !read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A body that fails once its deadline passes, however steadily it trickles in
/// (tower-http's timeout restarts at every chunk).
struct Deadline {
    body: Body,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Set once the body was read to its end.
    read: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within BODY_READ_TIMEOUT ({0:?})")]
pub(crate) struct BodyTimedOut(pub(crate) Duration);

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            if frame.is_none() || self.body.is_end_stream() {
                self.read.store(true, Ordering::Release);
            }
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let timeout = self.timeout;
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
