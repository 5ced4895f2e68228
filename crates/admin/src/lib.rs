//! palisade's admin plane: the HTTP API on the admin port: `/metrics` (Prometheus text
//! format), `/healthz`, `/status`, and the node controls `POST /drain` and `POST /resume`.
//!
//! **API Boundary:** this crate owns the admin HTTP shapes; planes expose plain Rust types
//! through [`NodeControl`], which the binary implements.
//!
//! Until admin accounts exist, the endpoints that change state answer only requests from this
//! node itself: a loopback peer, a `Host` that is an address literal or `localhost` (so a
//! DNS-rebound name in a browser on the node cannot reach them), and a JSON body (so a
//! cross-origin HTML form cannot either). Read-only endpoints answer anyone who can reach the
//! admin port (load balancers poll `/healthz`).

pub mod accounts;
pub mod process_metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use palisade_log_throttle::LogThrottle;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a control request did not do what was asked. Either way nothing changed.
#[derive(Debug)]
pub enum ControlError {
    /// Refused as unsafe in the current state (HTTP 409): `--force` may override.
    Conflict(String),
    /// Could not be carried out (HTTP 500), e.g. the data directory is not writable.
    Failed(String),
    /// The request itself is wrong (HTTP 400), e.g. a policy that does not compile.
    Invalid(String),
    /// Not possible on this node (HTTP 503), e.g. not a cluster member.
    Unavailable(String),
}

/// What the node lets the admin API see and do (implemented by the binary, which knows the
/// planes).
pub trait NodeControl: Send + Sync + 'static {
    /// The node's HA state as JSON.
    fn status(&self) -> serde_json::Value;
    /// Whether the operator has taken the node out of service.
    fn drained(&self) -> bool;
    /// The port monitor's last probe: every watched port and whether it listens (`Null`: no
    /// monitor, the node is in no HA group).
    fn monitor(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The director of each HA group as this node sees it (members, state, load), and with
    /// `client`, which node serves that client and why (`palisade status --client`).
    fn director(&self, client: Option<std::net::IpAddr>) -> serde_json::Value {
        let _ = client;
        serde_json::Value::Null
    }
    /// Takes the node out of service. `Err` (nothing changed) when that would leave a VIP
    /// with nobody to take it over, unless `force`.
    fn drain(
        self: Arc<Self>,
        drain: DrainRequest,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>>;
    /// Puts a drained node back in service.
    fn resume(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>>;
    /// `palisade fault`: a fault a drill injects into this node (crash, cut its VRRP
    /// interfaces for a while, stop).
    fn fault(
        self: Arc<Self>,
        fault: FaultRequest,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = fault;
        Box::pin(async {
            Err(ControlError::Unavailable(
                "this node takes no faults".to_owned(),
            ))
        })
    }
    /// Central management: this node's view of the cluster.
    fn cluster_status(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async { Err(not_a_member()) })
    }
    /// Every revision of the cluster's policy, newest first.
    fn policy_history(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async { Err(not_a_member()) })
    }
    /// One revision and its policy (`which`: an id, a unique prefix, or `head`).
    fn policy_revision(
        self: Arc<Self>,
        which: String,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = which;
        Box::pin(async { Err(not_a_member()) })
    }
    /// Adds, removes or re-keys an admin account (saved as a revision, like the policy).
    fn accounts_change(
        self: Arc<Self>,
        change: AccountChange,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = change;
        Box::pin(async { Err(not_a_member()) })
    }
    /// Links to a node that already holds a certificate of this cluster's CA.
    fn cluster_add(
        self: Arc<Self>,
        address: String,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = address;
        Box::pin(async {
            Err(ControlError::Unavailable(
                "cannot add node because the local node has no running listener available - new node would not be able to talk back to this node".to_owned(),
            ))
        })
    }
    /// The whole cluster's configuration as one document (`palisade backup`).
    fn cluster_backup(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async { Err(not_a_member()) })
    }
    /// Starts (or, with `finish`, ends) a rotation of the cluster CA.
    fn cluster_rotate_ca(
        self: Arc<Self>,
        finish: bool,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = finish;
        Box::pin(async { Err(not_a_member()) })
    }
    /// Renews this node's cluster certificate.
    fn cluster_renew(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async { Err(not_a_member()) })
    }
    /// Confirms a save made with a confirmation deadline.
    fn policy_confirm(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        Box::pin(async { Err(not_a_member()) })
    }
    /// Removes a node from the cluster (on the node that holds the CA key).
    fn cluster_remove(
        self: Arc<Self>,
        node_id: String,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = node_id;
        Box::pin(async { Err(not_a_member()) })
    }
    /// Saves an earlier revision's policy as the new head.
    fn policy_rollback(
        self: Arc<Self>,
        request: PolicyRollback,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = request;
        Box::pin(async { Err(not_a_member()) })
    }
    /// Saves a policy bundle as the cluster's new revision.
    fn policy_apply(
        self: Arc<Self>,
        request: PolicyApply,
    ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
        let _ = request;
        Box::pin(async { Err(not_a_member()) })
    }
}

fn not_a_member() -> ControlError {
    ControlError::Unavailable(
        "this node is not a cluster member (`palisade cluster init`, or `palisade cluster join`)"
            .to_owned(),
    )
}

/// The body of `POST /admin/accounts`: `op` is `add`, `remove` or `passwd`; `hash` the new
/// password's argon2id hash (made by the client: the password never travels).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    pub op: String,
    pub name: String,
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub saved_by: String,
}

/// The body of `POST /cluster/remove`.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRemove {
    pub node_id: String,
}

/// The body of `POST /policy/rollback`.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRollback {
    /// The revision whose policy becomes the head again (id, unique prefix).
    pub revision: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub saved_by: String,
}

/// The body of `POST /policy/apply`: the bundle (document and lists, as the document names
/// them) and what the save is based on.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyApply {
    pub document: String,
    #[serde(default)]
    pub lists: std::collections::BTreeMap<String, String>,
    /// The revision the operator's copy came from (hex); `None`: the copy names none.
    pub base: Option<String>,
    /// Save over whatever the head is.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub message: String,
    /// Who saves (an account, or the operator's user on this node).
    #[serde(default)]
    pub saved_by: String,
    /// Answer once this many peers run the new revision (or 30 s pass).
    #[serde(default)]
    pub wait: u32,
    /// Roll back automatically unless `POST /policy/confirm` comes within this many seconds
    /// (Junos' `commit confirmed`); 0: no confirmation needed.
    #[serde(default)]
    pub confirm_seconds: u64,
}

/// What the admin endpoints read from.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub node: palisade_identity::NodeName,
    pub control: Arc<dyn NodeControl>,
    /// The cluster's admin accounts, as the live revision has them (none: this node only).
    pub accounts: tokio::sync::watch::Receiver<Arc<accounts::Accounts>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/monitor", get(monitor))
        .route("/director", get(director))
        .route("/director/{client}", get(director_for_client))
        .route("/drain", post(drain))
        .route("/resume", post(resume))
        .route("/fault", post(fault))
        .route("/cluster", get(cluster_status))
        .route("/cluster/remove", post(cluster_remove))
        .route("/cluster/renew", post(cluster_renew))
        .route("/cluster/rotate-ca", post(cluster_rotate_ca))
        .route("/cluster/backup", get(cluster_backup))
        .route("/cluster/add", post(cluster_add))
        .route("/admin/accounts", get(accounts_list).post(accounts_change))
        .route("/policy/history", get(policy_history))
        .route("/policy/revision/{which}", get(policy_revision))
        .route("/policy/rollback", post(policy_rollback))
        .route("/policy/confirm", post(policy_confirm))
        .route(
            "/policy/apply",
            // A bundle holds its lists: a 1,000,000-entry list is tens of MiB.
            post(policy_apply).layer(axum::extract::DefaultBodyLimit::max(256 << 20)),
        )
        .with_state(state)
}

/// Bounds on the admin listener: it shares the process's file descriptors with the proxy, so
/// idle or half-sent connections must not be able to pile up (security review F7).
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    /// Connections served at once; more are reset at accept.
    pub max_connections: usize,
    /// A request head must arrive whole within this long, counted from the connection's
    /// start or the end of the previous response: also the idle timeout of a kept-alive
    /// connection.
    pub header_read_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves the admin API on `listener` until `shutdown` fires; then in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: AdminLimits,
    shutdown: CancellationToken,
) {
    let router = router(state);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused_log = LogThrottle::new(Duration::from_secs(10));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            if let Some(suppressed) = refused_log.admit() {
                tracing::warn!(
                    %peer,
                    suppressed,
                    max_connections = limits.max_connections,
                    "admin connection refused: at its connection limit"
                );
            }
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                // What `into_make_service_with_connect_info` would insert: the gate needs
                // the peer address.
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().call(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
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

async fn monitor(State(state): State<AdminState>) -> impl IntoResponse {
    Json(state.control.monitor())
}

async fn director(State(state): State<AdminState>) -> impl IntoResponse {
    Json(state.control.director(None))
}

async fn director_for_client(
    State(state): State<AdminState>,
    axum::extract::Path(client): axum::extract::Path<String>,
) -> Response {
    match client.parse::<std::net::IpAddr>() {
        Ok(client) => Json(state.control.director(Some(client))).into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            format!("{client:?} is not an IP address\n"),
        )
            .into_response(),
    }
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
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Even when no other healthy node is known to take over a VIP this node holds.
    #[serde(default)]
    pub force: bool,
    /// Hand the VIPs over at once and close nothing in order (the connections through this
    /// director then fail).
    #[serde(default)]
    pub now: bool,
}

async fn drain(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(request): Json<DrainRequest>,
) -> Response {
    control_response(state.control.clone().drain(request).await)
}

/// The body of `POST /fault` (`palisade fault`, used by `palisade drill`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// `crash` (the process is killed), `cut-link` (every VRRP interface drops all traffic
    /// for `seconds`), `stop` (an orderly stop, as on SIGTERM).
    pub kind: String,
    #[serde(default)]
    pub seconds: Option<u64>,
}

async fn fault(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(request): Json<FaultRequest>,
) -> Response {
    control_response(state.control.clone().fault(request).await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {}

async fn resume(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(ResumeRequest {}): Json<ResumeRequest>,
) -> Response {
    control_response(state.control.clone().resume().await)
}

async fn cluster_status(State(state): State<AdminState>) -> Response {
    control_response(state.control.clone().cluster_status().await)
}

async fn cluster_remove(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(request): Json<ClusterRemove>,
) -> Response {
    control_response(state.control.clone().cluster_remove(request.node_id).await)
}

async fn policy_history(State(state): State<AdminState>) -> Response {
    control_response(state.control.clone().policy_history().await)
}

async fn policy_revision(
    State(state): State<AdminState>,
    axum::extract::Path(which): axum::extract::Path<String>,
) -> Response {
    control_response(state.control.clone().policy_revision(which).await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    address: String,
}

async fn cluster_add(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(request): Json<AddRequest>,
) -> Response {
    control_response(state.control.clone().cluster_add(request.address).await)
}

/// Account names and when each was last changed (never a hash).
async fn accounts_list(State(state): State<AdminState>) -> Response {
    let accounts = state.accounts.borrow().clone();
    let list: Vec<serde_json::Value> = accounts
        .accounts
        .iter()
        .map(
            |(name, account)| serde_json::json!({ "name": name, "changed_ms": account.changed_ms }),
        )
        .collect();
    (
        StatusCode::OK,
        Json(serde_json::json!({ "accounts": list })),
    )
        .into_response()
}

async fn accounts_change(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Json(mut request): Json<AccountChange>,
) -> Response {
    if let Some(account) = who {
        request.saved_by = account;
    }
    control_response(state.control.clone().accounts_change(request).await)
}

async fn cluster_backup(State(state): State<AdminState>) -> Response {
    control_response(state.control.clone().cluster_backup().await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    finish: bool,
}

async fn cluster_rotate_ca(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(request): Json<RotateRequest>,
) -> Response {
    control_response(
        state
            .control
            .clone()
            .cluster_rotate_ca(request.finish)
            .await,
    )
}

async fn cluster_renew(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(ConfirmRequest {}): Json<ConfirmRequest>,
) -> Response {
    control_response(state.control.clone().cluster_renew().await)
}

async fn policy_confirm(
    State(state): State<AdminState>,
    _operator: Operator,
    Json(ConfirmRequest {}): Json<ConfirmRequest>,
) -> Response {
    control_response(state.control.clone().policy_confirm().await)
}

async fn policy_rollback(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Json(mut request): Json<PolicyRollback>,
) -> Response {
    if let Some(account) = who {
        request.saved_by = account;
    }
    control_response(state.control.clone().policy_rollback(request).await)
}

async fn policy_apply(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Json(mut request): Json<PolicyApply>,
) -> Response {
    if let Some(account) = who {
        request.saved_by = account;
    }
    control_response(state.control.clone().policy_apply(request).await)
}

fn control_response(result: Result<serde_json::Value, ControlError>) -> Response {
    match result {
        Ok(report) => (StatusCode::OK, Json(report)).into_response(),
        Err(ControlError::Conflict(error)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": error })),
        )
            .into_response(),
        Err(ControlError::Failed(error)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": error })),
        )
            .into_response(),
        Err(ControlError::Invalid(error)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": error })),
        )
            .into_response(),
        Err(ControlError::Unavailable(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": error })),
        )
            .into_response(),
    }
}

/// The operator of a state-changing request, authorized (see [`authorize`]) before its body
/// is read: `None` for this node itself, or the admin account named.
struct Operator(Option<String>);

impl axum::extract::FromRequestParts<AdminState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AdminState,
    ) -> Result<Operator, Response> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        authorize(state, peer, &parts.headers).await.map(Operator)
    }
}

/// Who may change state: this node itself (loopback, see [`gate`]: `Ok(None)`), or anyone
/// naming an admin account and its password (HTTP Basic: `Ok(Some(account))`). Otherwise
/// 401 (with the challenge) or 403.
async fn authorize(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Option<String>, Response> {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(name, password)| (name.to_owned(), password.to_owned()))
        });
    let Some((name, password)) = credentials else {
        return match gate(peer, headers) {
            Ok(()) => Ok(None),
            Err(why) if state.accounts.borrow().is_empty() => Err(forbidden(why)),
            Err(_) => Err(challenge("an admin account is needed from another host")),
        };
    };
    let accounts = state.accounts.borrow().clone();
    let account = name.clone();
    let valid = tokio::task::spawn_blocking(move || accounts.verify(&account, &password))
        .await
        .unwrap_or(false);
    if valid {
        Ok(Some(name))
    } else {
        tracing::warn!(%peer, account = %name, "admin login refused");
        Err(challenge("wrong account or password"))
    }
}

fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(serde_json::json!({ "error": why })),
    )
        .into_response()
}

fn challenge(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"palisade\"")],
        Json(serde_json::json!({ "error": why })),
    )
        .into_response()
}

/// The state-changing endpoints' gate for this node itself (see the crate docs): the request
/// comes over loopback and names the node by address or as `localhost`.
fn gate(peer: SocketAddr, headers: &HeaderMap) -> Result<(), &'static str> {
    // IPv4-mapped ::ffff:127.0.0.1 counts as loopback too (a dual-stack listener).
    if !peer.ip().to_canonical().is_loopback() {
        return Err(
            "changes are accepted from this node (loopback), or with an admin account (`palisade admin add`)",
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    if !host_names_this_node(host) {
        return Err("the Host header must be an address or localhost");
    }
    Ok(())
}

/// `127.0.0.1:4711`, `[::1]:4711`, `localhost:4711` (port optional): not a name that DNS could
/// have pointed here.
fn host_names_this_node(host: &str) -> bool {
    let without_port = match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && port.bytes().all(|byte| byte.is_ascii_digit())
                && !name.ends_with(':') =>
        {
            name
        }
        _ => host,
    };
    let bare = without_port
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(without_port);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok()
}

/// The address the admin API is reachable on, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = value.parse() {
            headers.insert(header::HOST, value);
        }
        headers
    }

    struct Idle;

    impl NodeControl for Idle {
        fn status(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn drained(&self) -> bool {
            false
        }
        fn drain(
            self: Arc<Self>,
            _: DrainRequest,
        ) -> BoxFuture<Result<serde_json::Value, ControlError>> {
            Box::pin(async { Ok(serde_json::Value::Null) })
        }
        fn resume(self: Arc<Self>) -> BoxFuture<Result<serde_json::Value, ControlError>> {
            Box::pin(async { Ok(serde_json::Value::Null) })
        }
    }

    fn state(accounts: accounts::Accounts) -> AdminState {
        let (_, receiver) = tokio::sync::watch::channel(Arc::new(accounts));
        AdminState {
            registry: Arc::new(Registry::default()),
            node: palisade_identity::NodeName::default(),
            control: Arc::new(Idle),
            accounts: receiver,
        }
    }

    fn basic(name: &str, password: &str, host_name: &str) -> HeaderMap {
        use base64::Engine;
        let mut headers = host(host_name);
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
        if let Ok(value) = format!("Basic {encoded}").parse() {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    #[tokio::test]
    async fn state_changes_from_this_node_or_with_an_admin_account() {
        let loopback: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let mapped = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 40000));
        let remote: SocketAddr = ([10, 213, 0, 13], 40000).into();
        let status = |result: Result<Option<String>, Response>| match result {
            Ok(who) => Ok(who),
            Err(response) => Err(response.status()),
        };
        let none = state(accounts::Accounts::default());
        assert_eq!(
            status(authorize(&none, loopback, &host("127.0.0.1:4711")).await),
            Ok(None)
        );
        assert_eq!(
            status(authorize(&none, mapped, &host("localhost:4711")).await),
            Ok(None)
        );
        for (peer, name) in [
            (remote, "127.0.0.1:4711"),
            (loopback, "evil.example:4711"),
            (loopback, ""),
        ] {
            assert!(gate(peer, &host(name)).is_err(), "{peer} {name}");
            assert_eq!(
                status(authorize(&none, peer, &host(name)).await),
                Err(StatusCode::FORBIDDEN),
                "{peer} {name}"
            );
        }
        // With accounts: another host gets in with one, and is challenged without.
        let mut accounts = accounts::Accounts::default();
        accounts.accounts.insert(
            "alice".to_owned(),
            accounts::Account {
                hash: accounts::hash_password("correct horse battery")
                    .unwrap_or_else(|error| panic!("{error}")),
                changed_ms: 1,
            },
        );
        let with = state(accounts);
        assert_eq!(
            status(
                authorize(
                    &with,
                    remote,
                    &basic("alice", "correct horse battery", "proxy-1:4711")
                )
                .await
            ),
            Ok(Some("alice".to_owned()))
        );
        for headers in [
            basic("alice", "wrong horse battery", "proxy-1:4711"),
            basic("mallory", "correct horse battery", "proxy-1:4711"),
            host("proxy-1:4711"),
        ] {
            assert_eq!(
                status(authorize(&with, remote, &headers).await),
                Err(StatusCode::UNAUTHORIZED)
            );
        }
    }

    #[test]
    fn only_addresses_and_localhost_name_this_node() {
        for host in [
            "127.0.0.1:4711",
            "127.0.0.1",
            "[::1]:4711",
            "[::1]",
            "::1",
            "localhost:4711",
            "LOCALHOST",
        ] {
            assert!(host_names_this_node(host), "{host}");
        }
        for host in [
            "",
            "evil.example:4711",
            "evil.example",
            "127.0.0.1.nip.io",
            "localhost.evil:80",
        ] {
            assert!(!host_names_this_node(host), "{host}");
        }
    }
}
