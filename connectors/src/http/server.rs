//! An HTTP server on its own thread with its own single-threaded tokio runtime: the only
//! place a teddyflow process waits on sockets, well away from the timely workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;

use super::health::Readiness;
use super::telemetry::{Telemetry, CONTENT_TYPE};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("starting the HTTP thread: {0}")]
    Start(std::io::Error),
}

/// A running server; stopping it (drop or [`HttpServer::stop`]) waits at most a second for
/// open responses (a dashboard's event stream never ends by itself).
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

const STOP_GRACE: Duration = Duration::from_secs(1);

impl HttpServer {
    /// Serve `router` on `addr` (`host:port`; port 0 picks a free one). Binding happens
    /// here, so a taken port is an error at once rather than a log line later.
    pub fn start(addr: &str, router: Router) -> Result<HttpServer, HttpError> {
        let bind_err = |source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HttpError::Start)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("teddyflow-http".into())
            .spawn(move || runtime.block_on(serve(listener, router, stopped)))
            .map_err(HttpError::Start)?;
        Ok(HttpServer {
            addr: local,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `GET /metrics`, `/healthz` and `/readyz` of `telemetry`. `/healthz` fails when a
    /// worker has not stepped for `stall`.
    pub fn telemetry(
        addr: &str,
        telemetry: Arc<Telemetry>,
        stall: Duration,
    ) -> Result<HttpServer, HttpError> {
        Self::start(addr, telemetry_router(telemetry, stall))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(listener: std::net::TcpListener, router: Router, stopped: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "http: listener unusable");
            return;
        }
    };
    let (graceful, signal) = oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async {
        let _ = signal.await;
    });
    let deadline = async {
        let _ = stopped.await;
        let _ = graceful.send(());
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                tracing::error!(error = %e, "http: server stopped");
            }
        }
        // Responses still open after the grace are dropped with the runtime.
        _ = deadline => {}
    }
}

#[derive(Clone)]
struct TelemetryState {
    telemetry: Arc<Telemetry>,
    stall: Duration,
}

pub fn telemetry_router(telemetry: Arc<Telemetry>, stall: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(TelemetryState { telemetry, stall })
}

async fn metrics(State(s): State<TelemetryState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.telemetry.encode())
}

async fn healthz(State(s): State<TelemetryState>) -> impl IntoResponse {
    match s.telemetry.health().live(s.stall) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(s): State<TelemetryState>) -> impl IntoResponse {
    match s.telemetry.health().readiness() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_string()),
        Readiness::Waiting(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", missing.join(", ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::super::exposition::parse;
    use super::*;

    /// A plain HTTP/1.1 GET: (status, body).
    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap();
        (status, body)
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let t = Telemetry::new(1, false);
        let server =
            HttpServer::telemetry("127.0.0.1:0", t.clone(), Duration::from_secs(5)).unwrap();
        let addr = server.local_addr();
        t.utterance_done();
        t.stage_ms("decode", 2.0);
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        let m = parse(&body).unwrap();
        assert_eq!(m.value("teddyflow_utterances_total", &[]), Some(1.0));
        assert!(m
            .histogram("teddyflow_stage_duration_seconds", &[("stage", "decode")])
            .is_some());

        let (status, body) = get(addr, "/readyz");
        assert_eq!(
            (status, body.as_str()),
            (503, "models loading, partitions not assigned\n")
        );
        t.health().models_loaded();
        t.health().partitions_assigned(0);
        assert_eq!(get(addr, "/readyz"), (200, "ready\n".into()));
        t.health().beat(0);
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()));
        assert_eq!(get(addr, "/nothing").0, 404);
        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "stopped servers release the port"
        );
    }

    #[test]
    fn a_taken_port_is_an_error_at_start() {
        let first = HttpServer::start("127.0.0.1:0", Router::new()).unwrap();
        let err = HttpServer::start(&first.local_addr().to_string(), Router::new()).unwrap_err();
        assert!(err.to_string().starts_with("binding 127.0.0.1:"), "{err}");
    }

    #[test]
    fn healthz_fails_when_a_worker_stalls() {
        let t = Telemetry::new(1, false);
        let server =
            HttpServer::telemetry("127.0.0.1:0", t.clone(), Duration::from_millis(20)).unwrap();
        t.health().beat(0);
        std::thread::sleep(Duration::from_millis(60));
        let (status, body) = get(server.local_addr(), "/healthz");
        assert_eq!(status, 503);
        assert!(body.contains("worker 0 last stepped"), "{body}");
    }
}
