//! palisade's admin plane: the HTTP API on the admin port. For now `/metrics` (Prometheus
//! text format) and `/healthz`.
//!
//! **API Boundary:** this crate owns the admin HTTP shapes; planes expose plain Rust types.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read from.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub node: Arc<str>,
    /// The node's HA state as JSON (built by the binary, which knows the planes).
    pub status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::with_capacity(8 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}

async fn status(State(state): State<AdminState>) -> impl IntoResponse {
    let body = (state.status)().to_string();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    format!("ok {}\n", state.node)
}

/// The address the admin API is reachable on, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
