//! The HTTP server: hyper's HTTP/1.1 connections, each watched for slow clients, and a cap on
//! how many are served at once (docs/adr/0022-http-connection-limits.md).
//!
//! `axum::serve` builds hyper without a timer and without limits: a client that sends its
//! header one byte at a time, opens a connection and says nothing, or never reads its
//! response, held a connection (and a file descriptor) for ever. Here each connection has
//! three deadlines, one per phase ([`phase`]): its request header, its request as a whole,
//! and the idle time between requests; past one, the connection is closed. Beyond
//! `HTTP_MAX_CONNECTIONS`, a connection is answered 503 and closed — except the health
//! probes, which are answered as usual, so an orchestrator does not restart a process for
//! being busy — and beyond a further [`OVERFLOW_CONNECTIONS`] it is closed at once.

mod phase;

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::pin, sync::Arc, time::Duration,
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderValue, Request, Response},
    Router,
};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use self::phase::{Phase, Watch, Watched};
use crate::{
    config::HttpConnectionConfig,
    error::{ApiError, ErrorCode},
    telemetry::names,
};

/// Connections accepted beyond `HTTP_MAX_CONNECTIONS` to answer a health probe (or a 503);
/// beyond these, a connection is closed as soon as it is accepted.
pub const OVERFLOW_CONNECTIONS: usize = 64;

/// The paths served to a connection over the cap: the orchestrator's probes.
const PROBES: &str = "/actuator/health";

/// How a connection was let in: its slot, held while it lives, and whether it is over
/// `HTTP_MAX_CONNECTIONS` (one request: a probe answered, anything else 503).
struct Admission {
    _slot: OwnedSemaphorePermit,
    probes_only: bool,
}

/// Serves `app` on `listener` until `signal` resolves, then lets the requests in progress
/// finish (each still bounded by its deadlines) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpConnectionConfig,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut signal = pin!(signal);
    loop {
        let accepted = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // the listener is fine, try again shortly (as axum::serve does).
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admission = if let Ok(slot) = slots.clone().try_acquire_owned() {
            Admission {
                _slot: slot,
                probes_only: false,
            }
        } else if let Ok(slot) = overflow.clone().try_acquire_owned() {
            metrics::counter!(names::HTTP_CONNECTIONS_CLOSED, "reason" => "over_capacity")
                .increment(1);
            Admission {
                _slot: slot,
                probes_only: true,
            }
        } else {
            metrics::counter!(names::HTTP_CONNECTIONS_CLOSED, "reason" => "refused").increment(1);
            drop(stream);
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            admission,
            stop.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection until it ends, one of its deadlines passes, or (after `stop`) its
/// request in progress is answered.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpConnectionConfig,
    admission: Admission,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let probes_only = admission.probes_only;
    let watch = Arc::new(Watch::new());
    let service = ConnectionService {
        app,
        peer,
        watch: watch.clone(),
        probes_only,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Over the cap: one request, then the connection is closed.
    builder.keep_alive(!probes_only);
    let io = TokioIo::new(Watched::new(stream, watch.clone()));
    let mut conn = pin!(builder.serve_connection(io, TowerToHyperService::new(service)));
    let _open = OpenConnection::count();
    let mut stopping = false;
    loop {
        let (phase, deadline) = watch.deadline(&limits);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                break;
            }
            () = watch.changed() => {}
            () = tokio::time::sleep_until(deadline.into()) => {
                if watch.deadline(&limits) == (phase, deadline) {
                    metrics::counter!(names::HTTP_CONNECTIONS_CLOSED, "reason" => phase.timeout())
                        .increment(1);
                    tracing::debug!(%peer, reason = phase.timeout(), "connection closed");
                    break;
                }
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(admission);
}

/// The router, for one connection: it knows the peer's address (the login throttle's client)
/// and moves the connection's phase at each request.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    peer: SocketAddr,
    watch: Arc<Watch>,
    probes_only: bool,
}

impl tower::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        self.watch.enter(Phase::Request);
        let watch = self.watch.clone();
        if self.probes_only && !req.uri().path().starts_with(PROBES) {
            let res = over_capacity(req.uri().path());
            return Box::pin(async move { Ok(phase::until_sent(res, watch)) });
        }
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let served = self.app.clone().oneshot(req);
        Box::pin(async move {
            let res = served.await?;
            Ok(phase::until_sent(res, watch))
        })
    }
}

/// 503 in the standard body, with `Retry-After` and `Connection: close`.
fn over_capacity(path: &str) -> Response<Body> {
    let err = ApiError::new(
        ErrorCode::ServiceUnavailable,
        "the server has too many connections open, retry later",
    );
    let json = serde_json::to_vec(&err.body(path)).expect("error body serializes");
    let mut res = Response::new(Body::from(json));
    *res.status_mut() = err.status();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// The `http_connections_open` gauge, for as long as a connection lives.
struct OpenConnection;

impl OpenConnection {
    fn count() -> Self {
        metrics::gauge!(names::HTTP_CONNECTIONS_OPEN).increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(names::HTTP_CONNECTIONS_OPEN).decrement(1.0);
    }
}
