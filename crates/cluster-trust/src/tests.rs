use std::sync::Arc;
use std::time::Duration;

use palisade_identity::NodeId;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use time::OffsetDateTime;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn ca() -> ClusterCa {
    match ClusterCa::create(ClusterId::random(), OffsetDateTime::now_utc(), 3650 * DAY) {
        Ok(ca) => ca,
        Err(error) => panic!("{error}"),
    }
}

/// A node of `ca`'s cluster, its certificate valid from `issued` for `lifetime`.
fn member(ca: &ClusterCa, issued: OffsetDateTime, lifetime: Duration) -> TlsIdentity {
    let node = NodeId::random();
    let (key_pem, csr) =
        node_key_and_request(node, &ca.cluster).unwrap_or_else(|error| panic!("{error}"));
    let (signed_for, cert_pem) = ca
        .sign(&csr, issued, lifetime)
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(signed_for, node);
    TlsIdentity {
        cluster: ca.cluster.clone(),
        node,
        cert_pem,
        key_pem,
        trusted_ca_pems: vec![ca.cert_pem.clone()],
    }
}

/// Runs a TLS 1.3 handshake in memory; the server's view of the client's node, or the error.
fn handshake(
    server: &TlsIdentity,
    client: &TlsIdentity,
    expected: NodeId,
) -> Result<NodeId, String> {
    let server_config = server
        .server_config(false)
        .map_err(|error| error.to_string())?;
    let client_config = client.client_config().map_err(|error| error.to_string())?;
    let name = ServerName::try_from(node_dns_name(expected, &client.cluster))
        .map_err(|error| error.to_string())?;
    let mut server_conn =
        ServerConnection::new(Arc::new(server_config)).map_err(|error| error.to_string())?;
    let mut client_conn =
        ClientConnection::new(Arc::new(client_config), name).map_err(|error| error.to_string())?;
    for _ in 0..10 {
        let mut wire = Vec::new();
        while client_conn.wants_write() {
            let _ = client_conn.write_tls(&mut wire);
        }
        if !wire.is_empty() {
            let _ = server_conn.read_tls(&mut &wire[..]);
            server_conn
                .process_new_packets()
                .map_err(|error| format!("server: {error}"))?;
        }
        let mut wire = Vec::new();
        while server_conn.wants_write() {
            let _ = server_conn.write_tls(&mut wire);
        }
        if !wire.is_empty() {
            let _ = client_conn.read_tls(&mut &wire[..]);
            client_conn
                .process_new_packets()
                .map_err(|error| format!("client: {error}"))?;
        }
        if !server_conn.is_handshaking() && !client_conn.is_handshaking() {
            let certs = server_conn
                .peer_certificates()
                .ok_or("no client certificate")?;
            let first = certs.first().ok_or("empty chain")?;
            let read =
                NodeCertificate::read(first, &server.cluster).map_err(|error| error.to_string())?;
            return Ok(read.node);
        }
    }
    Err("handshake did not finish".to_owned())
}

#[test]
fn members_of_one_ca_know_each_other_by_node_id() {
    let ca = ca();
    let now = OffsetDateTime::now_utc();
    let (a, b) = (member(&ca, now, 365 * DAY), member(&ca, now, 365 * DAY));
    assert_eq!(handshake(&a, &b, a.node), Ok(b.node));
    assert_eq!(handshake(&b, &a, b.node), Ok(a.node));
}

#[test]
fn another_cas_member_an_expired_one_and_the_wrong_node_are_refused() {
    let (ca, other) = (ca(), ca());
    let now = OffsetDateTime::now_utc();
    let server = member(&ca, now, 365 * DAY);
    let stranger = member(&other, now, 365 * DAY);
    assert!(
        handshake(&server, &stranger, server.node).is_err(),
        "another CA's certificate"
    );
    let expired = member(&ca, now - 2 * time::Duration::DAY, DAY);
    let refused = handshake(&server, &expired, server.node);
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| error.contains("xpired")),
        "{refused:?}"
    );
    // The client expected another node at that address: the server's name does not match.
    let client = member(&ca, now, 365 * DAY);
    assert!(
        handshake(&server, &client, NodeId::random()).is_err(),
        "wrong node"
    );
}

#[test]
fn during_a_rotation_both_cas_are_trusted() {
    let (old, new) = (ca(), ca());
    let now = OffsetDateTime::now_utc();
    let mut server = member(&old, now, 365 * DAY);
    // new CA, but the same cluster id so names stay the same
    let new = ClusterCa::from_pem(old.cluster.clone(), &new.cert_pem, &new.key_pem())
        .unwrap_or_else(|error| panic!("{error}"));
    let mut client = member(&new, now, 365 * DAY);
    server.trusted_ca_pems.push(new.cert_pem.clone());
    client.trusted_ca_pems.push(old.cert_pem.clone());
    assert_eq!(handshake(&server, &client, server.node), Ok(client.node));
}

#[test]
fn a_request_for_another_cluster_is_not_signed_and_expiry_is_read() {
    let (ca, other) = (ca(), ca());
    let (_, csr) = node_key_and_request(NodeId::random(), &other.cluster)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(matches!(
        ca.sign(&csr, OffsetDateTime::now_utc(), DAY),
        Err(TrustError::NotOurs(_))
    ));
    let now = OffsetDateTime::now_utc();
    let node = member(&ca, now, 20 * DAY);
    let der = pem_certificate(&node.cert_pem).unwrap_or_else(|error| panic!("{error}"));
    let read = NodeCertificate::read(&der, &ca.cluster).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(read.node, node.node);
    let left = read.remaining(now);
    assert!(left <= 20 * DAY && left > 19 * DAY, "{left:?}");
    assert!(read.remaining(now + 30 * time::Duration::DAY).is_zero());
}

#[test]
fn node_certificates_never_outlive_the_ca_and_get_distinct_serials() {
    let now = OffsetDateTime::now_utc();
    let ca = ClusterCa::create(ClusterId::random(), now, 30 * DAY)
        .unwrap_or_else(|error| panic!("{error}"));
    let node = NodeId::random();
    let (_, csr) =
        node_key_and_request(node, &ca.cluster).unwrap_or_else(|error| panic!("{error}"));
    let (_, first) = ca
        .sign(&csr, now, 365 * DAY)
        .unwrap_or_else(|error| panic!("{error}"));
    let (_, second) = ca
        .sign(&csr, now, Duration::MAX)
        .unwrap_or_else(|error| panic!("{error}"));
    let der = |pem: &str| pem_certificate(pem).unwrap_or_else(|error| panic!("{error}"));
    let parse = |der: &CertificateDer<'static>| {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).unwrap_or_else(|error| panic!("{error}"));
        (
            cert.validity().not_after.to_datetime(),
            cert.raw_serial().to_vec(),
            cert.is_ca(),
        )
    };
    let (first_end, first_serial, first_is_ca) = parse(&der(&first));
    let (second_end, second_serial, _) = parse(&der(&second));
    let ca_end = ca.not_after().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(first_end, ca_end);
    assert_eq!(second_end, ca_end);
    assert_ne!(
        first_serial, second_serial,
        "a renewal with the same key reused the serial"
    );
    assert!(!first_is_ca);
}

#[test]
fn names_and_ids() {
    let cluster = ClusterId::random();
    let node = NodeId::random();
    assert_eq!(
        node_of_dns_name(&node_dns_name(node, &cluster), &cluster),
        Some(node)
    );
    assert_eq!(
        node_of_dns_name(&node_dns_name(node, &cluster), &ClusterId::random()),
        None
    );
    assert!(ClusterId::parse(cluster.as_str()).is_ok());
    assert!(ClusterId::parse("../etc").is_err());
}
