//! `teddyflow dashboard`: one live page about the fleet, from the metrics and alerts
//! topics. It reads counts and latencies only: of an alert, just its kind (never the
//! excerpt or an id). Every asset is compiled into the binary, so it works offline.

mod fleet;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use clap::Args;
use futures_util::Stream;
use teddyflow_connectors::http::HttpServer;
use teddyflow_connectors::kafka::{KafkaSettings, StartAt, TopicReader};
use tokio::sync::watch;

pub use fleet::Fleet;

#[derive(Args, Debug)]
pub struct DashboardArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Address to serve the page on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[arg(long, default_value = "teddy.metrics")]
    metrics_topic: String,
    #[arg(long, default_value = "teddy.alerts")]
    alerts_topic: String,
    /// Points kept in the latency charts (one per metrics interval).
    #[arg(long, default_value_t = 120)]
    history: usize,
}

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// How often the page is sent a new view while snapshots arrive.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let mut fleet = Fleet::new(args.history);
    let (tx, rx) = watch::channel(serde_json::to_string(&fleet.view())?);
    let server = HttpServer::start(&args.listen, router(rx))?;
    tracing::info!(url = %format!("http://{}/", server.local_addr()), "dashboard serving");
    let reader = open(&args)?;
    // Only now: while it waits for the topics, Ctrl-C or SIGTERM ends it at once.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Release))?;
    let mut changed = false;
    let mut published = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if let Some(rec) = reader.next(Duration::from_millis(200)) {
            let payload = rec.value.as_deref().unwrap_or_default();
            changed |= fold(&mut fleet, &args, &rec.topic, payload);
        }
        if changed && published.elapsed() >= PUBLISH_EVERY {
            tx.send_replace(serde_json::to_string(&fleet.view())?);
            (changed, published) = (false, Instant::now());
        }
    }
    server.stop();
    Ok(())
}

/// A record of either topic into the fleet; false when it was not one it understands.
fn fold(fleet: &mut Fleet, args: &DashboardArgs, topic: &str, payload: &[u8]) -> bool {
    if topic == args.metrics_topic {
        serde_json::from_slice(payload)
            .map(|s| fleet.snapshot(s))
            .is_ok()
    } else if topic == args.alerts_topic {
        serde_json::from_slice(payload)
            .map(|a| fleet.alert(a))
            .is_ok()
    } else {
        false
    }
}

/// Both topics from their beginning (the processor may create them after we start).
fn open(args: &DashboardArgs) -> anyhow::Result<TopicReader> {
    let settings = KafkaSettings {
        brokers: args.brokers.clone(),
        group_id: format!("teddyflow-dashboard-{}", std::process::id()),
        ..Default::default()
    };
    let topics = [args.metrics_topic.as_str(), args.alerts_topic.as_str()];
    Ok(TopicReader::open(
        &settings,
        &topics,
        StartAt::Beginning,
        Duration::from_secs(60),
    )?)
}

fn router(views: watch::Receiver<String>) -> Router {
    let asset = |ty: &'static str, body: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, ty)], body) })
    };
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/app.js", asset("text/javascript; charset=utf-8", APP_JS))
        .route("/style.css", asset("text/css; charset=utf-8", STYLE))
        .route("/state", get(state))
        .route("/events", get(events))
        .with_state(views)
}

async fn state(State(views): State<watch::Receiver<String>>) -> impl IntoResponse {
    let body = views.borrow().clone();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Server-sent events: the current view at once, then each new one.
async fn events(
    State(views): State<watch::Receiver<String>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((views, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let data = rx.borrow_and_update().clone();
        Some((Ok(Event::default().event("view").data(data)), (rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
