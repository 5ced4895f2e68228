//! The join exchange on the cluster port: a node with a token but no certificate opens a TLS
//! session (checking the CA its token pins), sends its signing request and the token's secret
//! in one frame, and gets its certificate and the cluster's CAs back. Served only by the node
//! that holds the CA key; one frame each way, bounded in size and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_cluster_trust::files::{NODE_CERT_LIFETIME, TrustDir};
use palisade_cluster_trust::join::{
    JoinRequest, JoinResponse, JoinToken, MAX_JOIN_FRAME, join_client_config, parse_digest,
};
use palisade_cluster_trust::{ClusterId, member_dns_name};
use palisade_identity::NodeId;
use palisade_log_throttle::LogThrottle;
use palisade_peer_link::JoinHandler;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

/// The whole exchange must finish within this.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "(301 - 'cannot connect') - \"cluster join: failure '{0}' while sending request - last action: connect\""
    )]
    Connect(std::io::Error),
    #[error(
        "TLS with the member failed: {0} (is it the node that made the cluster, and does the token belong to its CA?)"
    )]
    Tls(std::io::Error),
    #[error("the member answered nothing useful: {0}")]
    Protocol(String),
    #[error("the member refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Trust(#[from] palisade_cluster_trust::TrustError),
    #[error("no answer within {JOIN_TIMEOUT:?}")]
    Timeout,
}

async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, String> {
    let length = stream.read_u32().await.map_err(|error| error.to_string())? as usize;
    if length > MAX_JOIN_FRAME {
        return Err(format!(
            "a frame of {length} bytes (at most {MAX_JOIN_FRAME})"
        ));
    }
    let mut frame = vec![0u8; length];
    stream
        .read_exact(&mut frame)
        .await
        .map_err(|error| error.to_string())?;
    Ok(frame)
}

async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    stream.write_u32(bytes.len() as u32).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// The join service of the node that holds the CA key, for the peer links' TLS acceptor.
pub fn join_handler(trust: TrustDir, tasks: TaskTracker) -> JoinHandler {
    // Anyone who can reach the port can cause these lines.
    let refused_log = Arc::new(LogThrottle::new(Duration::from_secs(10)));
    Arc::new(move |mut stream, remote| {
        let (trust, refused_log) = (trust.clone(), refused_log.clone());
        tasks.spawn(async move {
            let served = tokio::time::timeout(JOIN_TIMEOUT, async {
                let request = read_frame(&mut stream).await?;
                let response = answer(&trust, &request, remote).await;
                let bytes = serde_json::to_vec(&response).map_err(|error| error.to_string())?;
                write_frame(&mut stream, &bytes)
                    .await
                    .map_err(|error| error.to_string())?;
                let _ = stream.shutdown().await;
                Ok::<_, String>(response.error)
            })
            .await;
            let refusal = match served {
                Ok(Ok(None)) => None,
                Ok(Ok(Some(error))) | Ok(Err(error)) => Some(error),
                Err(_) => Some(format!("no request within {JOIN_TIMEOUT:?}")),
            };
            if let Some(error) = refusal
                && let Some(suppressed) = refused_log.admit()
            {
                tracing::warn!(%remote, suppressed, "cluster join refused: {error}");
            }
        });
    })
}

async fn answer(trust: &TrustDir, request: &[u8], remote: SocketAddr) -> JoinResponse {
    let refuse = |cluster: String, error: String| JoinResponse {
        certificate_pem: None,
        ca_pems: Vec::new(),
        cluster,
        error: Some(error),
    };
    let request: JoinRequest = match serde_json::from_slice(request) {
        Ok(request) => request,
        Err(error) => return refuse(String::new(), format!("malformed join request: {error}")),
    };
    let trust = trust.clone();
    let signed = tokio::task::spawn_blocking(move || {
        let now = OffsetDateTime::now_utc();
        let secret = parse_digest(&request.secret).ok_or("malformed token secret")?;
        let claimed: NodeId = request
            .node_id
            .parse()
            .map_err(|_| "malformed node id".to_owned())?;
        let ca = trust
            .ca()
            .map_err(|error| error.to_string())?
            .ok_or("this node does not hold the CA key")?;
        trust.redeem(&secret, now).map_err(|error| error.to_string())?;
        let (node, certificate) = ca
            .sign(&request.csr_pem, now, NODE_CERT_LIFETIME)
            .map_err(|error| error.to_string())?;
        if node != claimed {
            return Err(format!("the request names node {node}, the joining node is {claimed}"));
        }
        let cas = trust.trusted_cas().map_err(|error| error.to_string())?;
        tracing::warn!(%node, name = %request.name, %remote, cluster = ca.cluster.as_str(), "node joined the cluster: certificate issued");
        Ok::<_, String>((ca.cluster.as_str().to_owned(), certificate, cas))
    })
    .await;
    match signed {
        Ok(Ok((cluster, certificate, ca_pems))) => JoinResponse {
            certificate_pem: Some(certificate),
            ca_pems,
            cluster,
            error: None,
        },
        Ok(Err(error)) => refuse(String::new(), error),
        Err(error) => refuse(String::new(), format!("join task failed: {error}")),
    }
}

/// What a successful join brings home.
pub struct Joined {
    pub cluster: ClusterId,
    pub key_pem: String,
    pub certificate_pem: String,
    pub ca_pems: Vec<String>,
}

/// Joins the cluster of `token` through the member at `member` (the CA holder). The key is
/// made here and never sent.
pub async fn join(
    member: SocketAddr,
    token: &JoinToken,
    node: NodeId,
    name: &str,
) -> Result<Joined, JoinError> {
    let (key_pem, csr_pem) = palisade_cluster_trust::node_key_and_request(node, &token.cluster)?;
    let config = join_client_config(token)?;
    let server_name = rustls_pki_types::ServerName::try_from(member_dns_name(&token.cluster))
        .map_err(|error| JoinError::Protocol(error.to_string()))?;
    let exchange = async {
        let tcp = TcpStream::connect(member)
            .await
            .map_err(JoinError::Connect)?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(JoinError::Tls)?;
        let request = JoinRequest {
            secret: token
                .secret
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
            node_id: node.to_string(),
            name: name.to_owned(),
            csr_pem,
        };
        let bytes =
            serde_json::to_vec(&request).map_err(|error| JoinError::Protocol(error.to_string()))?;
        write_frame(&mut stream, &bytes)
            .await
            .map_err(|error| JoinError::Protocol(error.to_string()))?;
        let answer = read_frame(&mut stream).await.map_err(JoinError::Protocol)?;
        serde_json::from_slice::<JoinResponse>(&answer)
            .map_err(|error| JoinError::Protocol(error.to_string()))
    };
    let response = tokio::time::timeout(JOIN_TIMEOUT, exchange)
        .await
        .map_err(|_| JoinError::Timeout)??;
    if let Some(error) = response.error {
        return Err(JoinError::Refused(error));
    }
    let certificate_pem = response
        .certificate_pem
        .ok_or_else(|| JoinError::Protocol("no certificate in the answer".to_owned()))?;
    let cluster = ClusterId::parse(&response.cluster)?;
    if cluster != token.cluster {
        return Err(JoinError::Protocol(format!(
            "the member is in cluster {}, the token is for {}",
            cluster.as_str(),
            token.cluster.as_str()
        )));
    }
    Ok(Joined {
        cluster,
        key_pem,
        certificate_pem,
        ca_pems: response.ca_pems,
    })
}
