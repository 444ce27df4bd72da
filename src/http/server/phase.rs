//! Where a connection is in its exchange, and since when — what its deadline is measured
//! from. hyper's own header-read timer starts as soon as a connection waits for a request,
//! so it is an idle timeout as well; a keep-alive connection behind a proxy must be allowed
//! to idle longer than a header may take to arrive, hence these phases of our own:
//!
//! * [`Phase::Header`]: from the connection's opening, or from the first byte after an idle
//!   spell, until hyper has the whole header block (`HTTP_HEADER_READ_TIMEOUT_SECS`);
//! * [`Phase::Request`]: from then until the response's body has been handed over
//!   (`HTTP_WHOLE_REQUEST_TIMEOUT_SECS`) — a body sent slowly, a response read slowly;
//! * [`Phase::Idle`]: from then until the next byte arrives (`HTTP_IDLE_TIMEOUT_SECS`),
//!   which also bounds the flushing of a response's last bytes to a client that stopped
//!   reading.

use std::{
    io,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::{Body, Bytes},
    http::Response,
};
use http_body::Frame;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};

use crate::config::HttpConnectionConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Header,
    Request,
    Idle,
}

impl Phase {
    /// The metric label of a connection closed in this phase.
    pub fn timeout(self) -> &'static str {
        match self {
            Phase::Header => "header_timeout",
            Phase::Request => "request_timeout",
            Phase::Idle => "idle_timeout",
        }
    }

    fn limit(self, limits: &HttpConnectionConfig) -> std::time::Duration {
        match self {
            Phase::Header => limits.header_read_timeout,
            Phase::Request => limits.whole_request_timeout,
            Phase::Idle => limits.idle_timeout,
        }
    }
}

/// A connection's phase, shared by its socket, its service and the task that serves it.
pub struct Watch {
    phase: Mutex<(Phase, Instant)>,
    changed: Notify,
}

impl Watch {
    /// A connection just opened: it owes a request header.
    pub fn new() -> Self {
        Self {
            phase: Mutex::new((Phase::Header, Instant::now())),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Instant)> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enter(&self, phase: Phase) {
        *self.lock() = (phase, Instant::now());
        // One waiter (the connection's task); a permit is kept if it is not waiting yet.
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection is now reading a header.
    fn received(&self) {
        let mut current = self.lock();
        if current.0 == Phase::Idle {
            *current = (Phase::Header, Instant::now());
            drop(current);
            self.changed.notify_one();
        }
    }

    /// The current phase and the instant it runs out.
    pub fn deadline(&self, limits: &HttpConnectionConfig) -> (Phase, Instant) {
        let (phase, since) = *self.lock();
        (phase, since + phase.limit(limits))
    }

    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// The connection's socket, telling the watch when bytes arrive.
pub struct Watched {
    stream: TcpStream,
    watch: std::sync::Arc<Watch>,
}

impl Watched {
    pub fn new(stream: TcpStream, watch: std::sync::Arc<Watch>) -> Self {
        Self { stream, watch }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// `res`, whose connection goes idle once its body has been handed over (or dropped).
pub fn until_sent(res: Response<Body>, watch: std::sync::Arc<Watch>) -> Response<Body> {
    res.map(|body| {
        Body::new(Sending {
            body,
            watch: Some(watch),
        })
    })
}

/// A response body that ends its connection's request phase when it ends.
struct Sending {
    body: Body,
    watch: Option<std::sync::Arc<Watch>>,
}

impl Sending {
    fn done(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.enter(Phase::Idle);
        }
    }
}

impl http_body::Body for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.done();
    }
}
