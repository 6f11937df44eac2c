//! The admin server: `GET /healthz` (the process is up), `/readyz` (every mapping is polling; 503
//! with a per-mapping report otherwise), `/metrics` (Prometheus text), and live control:
//! `GET /mappings` (each mapping's status and whether it is paused), `POST
//! /mappings/{name}/pause` and `/resume` (see [`crate::control`]).
//!
//! The control endpoints need the header `X-Sluice-Control: 1`, which no web page can send to
//! another origin without a preflight (a browser on the host cannot be made to pause mappings).
//! With `admin.token` set they need it too, as `Authorization: Bearer <token>` (compared in
//! constant time), from every caller; without one they answer loopback callers only (`sluice
//! ctl` in the same task): the admin server often listens on every interface for a load
//! balancer's health check, which must not let whoever reaches it stop the mappings.

use crate::control::Control;
use crate::health::Health;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: PrometheusHandle,
    token: Option<std::sync::Arc<str>>,
}

/// Binds the admin address now (so a busy port fails start-up) and serves until `shutdown`;
/// returns the server and the address it listens on (port 0 in the config picks a free one).
pub async fn serve(
    listen: SocketAddr,
    health: Health,
    metrics: PrometheusHandle,
    token: Option<String>,
    shutdown: CancellationToken,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), crate::http_server::ListenError> {
    let listener = crate::http_server::bind("admin", listen).await?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/mappings", get(mappings))
        .route("/mappings/{name}/{action}", post(pause_or_resume))
        .with_state(AdminState {
            health,
            metrics,
            token: token.map(Into::into),
        });
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(address = %bound, "admin server listening");
    Ok((
        crate::http_server::spawn("admin", listener, router, shutdown),
        bound,
    ))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let (ready, report) = state.health.readiness();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, report)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The header every control request carries (`sluice ctl` sends it).
pub const CONTROL_HEADER: &str = "x-sluice-control";

/// Why a control request is refused, if it is.
fn refused(state: &AdminState, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<Response> {
    if !headers.contains_key(CONTROL_HEADER) {
        return Some(json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "a control request carries the header X-Sluice-Control: 1 (sluice ctl sends it)"}),
        ));
    }
    let Some(token) = &state.token else {
        // An IPv4 caller of a dual-stack listener arrives as ::ffff:127.0.0.1.
        if peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) {
            return None;
        }
        return Some(json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "mappings are controlled from loopback only (run `sluice ctl` in the task), or set admin.token and send it as Authorization: Bearer <token>"}),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if crate::http_server::constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        None
    } else {
        Some(json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "the request does not carry admin.token as Authorization: Bearer <token>"}),
        ))
    }
}

async fn mappings(State(state): State<AdminState>) -> Response {
    let (_, report) = state.health.readiness();
    let mut mappings = serde_json::Map::new();
    for (name, paused) in state.health.paused() {
        let status = report["mappings"][&name]["status"].clone();
        mappings.insert(name, json!({"paused": paused, "status": status}));
    }
    json_response(StatusCode::OK, json!({ "mappings": mappings }))
}

/// `POST /mappings/{name}/pause` and `/resume`.
async fn pause_or_resume(
    State(state): State<AdminState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no action {action:?}; POST /mappings/{{name}}/pause or /resume")}),
            );
        }
    };
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer);
    control(&state, peer, &headers, &name, paused)
}

fn control(
    state: &AdminState,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    name: &str,
    paused: bool,
) -> Response {
    if let Some(refusal) = refused(state, peer, headers) {
        tracing::warn!(mapping = %name, peer = ?peer, paused, "refused a control request");
        return refusal;
    }
    // Who paused a mapping is in the log.
    tracing::info!(mapping = %name, peer = ?peer, paused, "control request");
    match state.health.set_paused(name, paused) {
        Control::UnknownMapping => {
            let known: Vec<String> = state.health.paused().into_keys().collect();
            json_response(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no mapping named {name:?}; running mappings: [{}]", known.join(", "))}),
            )
        }
        done => json_response(
            StatusCode::OK,
            json!({"mapping": name, "paused": paused, "changed": done == Control::Changed}),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(token: Option<&str>) -> AdminState {
        AdminState {
            health: Health::new(Duration::from_secs(60), Duration::from_secs(60)),
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            token: token.map(Into::into),
        }
    }

    fn control_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTROL_HEADER, "1".parse().unwrap());
        headers
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = control_headers();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    // The admin server listens on every interface on ECS (for the load balancer's health
    // check): whoever reaches it must not be able to stop the mappings.
    #[test]
    fn control_from_another_host_needs_the_admin_token() {
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.3.7:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let open = state(None);
        assert!(refused(&open, Some(loopback), &control_headers()).is_none());
        assert!(refused(&open, Some(mapped), &control_headers()).is_none());
        let refusal = refused(&open, Some(remote), &control_headers()).unwrap();
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        assert!(
            refused(&open, None, &control_headers()).is_some(),
            "no address, no trust"
        );
        let guarded = state(Some("s3cret"));
        assert!(refused(&guarded, Some(remote), &bearer("s3cret")).is_none());
        let wrong = refused(&guarded, Some(remote), &bearer("guess")).unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        // With a token, loopback needs it too: a sidecar proxy forwards from 127.0.0.1.
        assert!(refused(&guarded, Some(loopback), &control_headers()).is_some());
    }

    // A web page in a browser on the host can POST to 127.0.0.1 without a preflight, but not
    // with a custom header.
    #[test]
    fn a_control_request_without_the_control_header_is_refused() {
        let open = state(None);
        let loopback = Some("127.0.0.1:5000".parse().unwrap());
        let refusal = refused(&open, loopback, &HeaderMap::new()).unwrap();
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn pausing_an_unknown_mapping_names_the_running_ones() {
        let admin = state(None);
        let _orders = admin.health.register("orders");
        let loopback = Some("127.0.0.1:1".parse().unwrap());
        let answer = control(&admin, loopback, &control_headers(), "order", true);
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("running mappings: [orders]"), "{body}");
        let answer = control(&admin, loopback, &control_headers(), "orders", true);
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(admin.health.paused()["orders"]);
    }
}
