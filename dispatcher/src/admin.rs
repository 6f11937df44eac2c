//! The admin server: `GET /healthz` (the process is up), `/readyz` (every mapping is polling; 503
//! with a per-mapping report otherwise) and `/metrics` (Prometheus text).

use crate::health::Health;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: PrometheusHandle,
}

/// Binds the admin address now (so a busy port fails start-up) and serves until `shutdown`;
/// returns the server and the address it listens on (port 0 in the config picks a free one).
pub async fn serve(
    listen: SocketAddr,
    health: Health,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), crate::http_server::ListenError> {
    let listener = crate::http_server::bind("admin", listen).await?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState { health, metrics });
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(address = %bound, "admin server listening");
    Ok((
        crate::http_server::spawn("admin", listener, router, shutdown),
        bound,
    ))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let (ready, report) = state.health.readiness();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{report}\n"),
    )
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    // Sampled when scraped: a count that keeps growing under steady load is a task leak.
    metrics::gauge!("sluice_runtime_alive_tasks").set(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as f64,
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
