//! palisade's admin plane: the HTTP API on the admin port: `/metrics` (Prometheus text
//! format), `/healthz`, `/status`, and the node controls `POST /drain` and `POST /resume`.
//!
//! **API Boundary:** this crate owns the admin HTTP shapes; planes expose plain Rust types
//! through [`NodeControl`], which the binary implements.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the node lets the admin API see and do (implemented by the binary, which knows the
/// planes).
pub trait NodeControl: Send + Sync + 'static {
    /// The node's HA state as JSON.
    fn status(&self) -> serde_json::Value;
    /// Whether the operator has taken the node out of service.
    fn drained(&self) -> bool;
    /// Takes the node out of service. `Err` (nothing changed) when that would leave a VIP
    /// with nobody to take it over, unless `force`.
    fn drain(self: Arc<Self>, force: bool) -> BoxFuture<Result<serde_json::Value, String>>;
    /// Puts a drained node back in service.
    fn resume(self: Arc<Self>) -> BoxFuture<serde_json::Value>;
}

/// What the admin endpoints read from.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub node: Arc<str>,
    pub control: Arc<dyn NodeControl>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/drain", post(drain))
        .route("/resume", post(resume))
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
    Json(state.control.status())
}

/// 503 while drained, so that load balancers and monitors in front of the node take it out
/// of rotation as well.
async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.control.drained() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("drained {}\n", state.node),
        )
    } else {
        (StatusCode::OK, format!("ok {}\n", state.node))
    }
}

/// The body of `POST /drain`. The endpoints that change state take JSON only: a browser
/// cannot send `application/json` cross-origin without a CORS preflight, which this API never
/// answers, so a web page cannot drain a node through a browser on it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    #[serde(default)]
    force: bool,
}

async fn drain(
    State(state): State<AdminState>,
    Json(request): Json<DrainRequest>,
) -> impl IntoResponse {
    match state.control.clone().drain(request.force).await {
        Ok(report) => (StatusCode::OK, Json(report)),
        Err(error) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": error })),
        ),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {}

async fn resume(
    State(state): State<AdminState>,
    Json(ResumeRequest {}): Json<ResumeRequest>,
) -> impl IntoResponse {
    Json(state.control.clone().resume().await)
}

/// The address the admin API is reachable on, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}
