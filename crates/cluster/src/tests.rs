use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;

use palisade_identity::{Incarnation, NodeName};
use palisade_peer_link::mesh::MeshConfig;
use palisade_peer_link::metrics::MeshMetrics;
use palisade_peer_link::{LinkAuth, LocalIdentity};

use super::*;

struct TestNode {
    cluster: ClusterHandle,
    activated: Arc<Mutex<Vec<(RevisionId, PolicyBundle)>>>,
    dir: PathBuf,
    stop: CancellationToken,
    tasks: TaskTracker,
    listen: SocketAddr,
}

async fn node(name: &str, local: [u8; 4], peer: SocketAddr) -> TestNode {
    let dir = std::env::temp_dir().join(format!("palisade-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    node_in(dir, name, local, peer).await
}

async fn node_in(dir: PathBuf, name: &str, local: [u8; 4], peer: SocketAddr) -> TestNode {
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{error}"));
    let store = Arc::new(Store::open(&dir).unwrap_or_else(|error| panic!("{error}")));
    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
    let local_addr = IpAddr::from(local);
    let Ok(node_name) = NodeName::new(name) else {
        panic!("name");
    };
    let mesh = palisade_peer_link::mesh::start(
        MeshConfig {
            listen: SocketAddr::new(local_addr, 0),
            peers: vec![peer],
            local_addr,
            auth: LinkAuth::group_key(b"cluster test key"),
            identity: LocalIdentity {
                node_id: store.node_id(),
                incarnation: Incarnation::random(),
                name: node_name,
            },
            metrics: MeshMetrics::default(),
            timing: Default::default(),
        },
        &tasks,
        stop.clone(),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    let listen = mesh.listen_addr();
    let activated: Arc<Mutex<Vec<(RevisionId, PolicyBundle)>>> = Arc::default();
    let record = activated.clone();
    let cluster = start(
        ClusterConfig {
            me: store.node_id(),
            priority: NodePriority::default(),
            max_ahead: Duration::from_secs(120),
            digest_interval: Duration::from_millis(500),
            release: "0.1.0".to_owned(),
            version_match: palisade_replication::coordinator::VersionMatch::Minor,
            metrics: metrics::ClusterMetrics::default(),
            trust: None,
            denied: DeniedNodes::default(),
            tls: None,
            own_record: format!("{{\"name\":\"{name}\"}}").into_bytes(),
        },
        store,
        mesh,
        Arc::new(move |head, bundle| {
            if let Ok(mut list) = record.lock() {
                list.push((head, bundle));
            }
        }),
        &tasks,
        stop.clone(),
    )
    .unwrap_or_else(|error| panic!("{error}"));
    TestNode {
        cluster,
        activated,
        dir,
        stop,
        tasks,
        listen,
    }
}

async fn activated(node: &TestNode, head: RevisionId) -> PolicyBundle {
    let mut active = node.cluster.active();
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        active.wait_for(|active| *active == Some(head)),
    )
    .await;
    assert!(waited.is_ok(), "{head:?} was not activated");
    let list = node
        .activated
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match list.iter().rev().find(|(id, _)| *id == head) {
        Some((_, bundle)) => bundle.clone(),
        None => panic!("activated without a bundle"),
    }
}

fn bundle(document: &str, list: &str) -> PolicyBundle {
    PolicyBundle {
        document: document.to_owned(),
        lists: BTreeMap::from([("lists/blocked.txt".to_owned(), list.to_owned())]),
    }
}

/// A save on one node is stored, pushed, and activated on the other with its list; a save
/// there on top of it comes back; a save from a stale base is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_on_one_node_is_live_on_the_other() {
    let b = node("b", [127, 0, 0, 8], SocketAddr::from(([127, 0, 0, 7], 9))).await;
    let a = node("a", [127, 0, 0, 7], b.listen).await;
    let first = bundle("document one\n", "bad.example\n");
    let saved = a
        .cluster
        .save(first.clone(), Base::Head, "alice", "first")
        .await;
    let Ok(Saved {
        revision: saved, ..
    }) = saved
    else {
        panic!("save refused: {saved:?}");
    };
    assert_eq!(activated(&a, saved).await, first);
    assert_eq!(activated(&b, saved).await, first);
    // Each holds the other's node record too.
    let both = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let held = a.cluster.records().await.unwrap_or_default();
            if held
                .iter()
                .any(|record| record.bytes == b"{\"name\":\"b\"}")
            {
                return held.len();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(both.ok(), Some(2), "a never got b's record");

    let second = bundle("document two\n", "bad.example\nworse.example\n");
    let Ok(Saved {
        revision: again, ..
    }) = b
        .cluster
        .save(second.clone(), Base::Revision(Some(saved)), "bob", "second")
        .await
    else {
        panic!("second save refused");
    };
    assert_eq!(activated(&a, again).await, second);
    let stale = a
        .cluster
        .save(
            first,
            Base::Revision(Some(saved)),
            "carol",
            "from a stale copy",
        )
        .await;
    assert!(matches!(stale, Err(ClusterError::Save(_))), "{stale:?}");

    // b restarts alone: its store has the history and every content, so it activates the
    // head again without any peer.
    b.stop.cancel();
    b.tasks.close();
    b.tasks.wait().await;
    let b_dir = b.dir.clone();
    drop(b);
    a.stop.cancel();
    a.tasks.close();
    a.tasks.wait().await;
    let restarted = node_in(
        b_dir,
        "b",
        [127, 0, 0, 8],
        SocketAddr::from(([127, 0, 0, 7], 9)),
    )
    .await;
    assert_eq!(activated(&restarted, again).await, second);
    for node in [&a, &restarted] {
        node.stop.cancel();
        node.tasks.close();
        node.tasks.wait().await;
        let _ = std::fs::remove_dir_all(&node.dir);
    }
}

fn trust_dir(name: &str) -> palisade_cluster_trust::files::TrustDir {
    let dir = std::env::temp_dir().join(format!("palisade-join-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    palisade_cluster_trust::files::TrustDir::of_data_dir(&dir)
}

async fn member_mesh(
    identity: &palisade_cluster_trust::TlsIdentity,
    joins: Option<palisade_peer_link::JoinHandler>,
    local: [u8; 4],
    peers: Vec<SocketAddr>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> MeshHandle {
    let local_addr = IpAddr::from(local);
    let Ok(name) = NodeName::new("member") else {
        panic!("name");
    };
    palisade_peer_link::mesh::start(
        MeshConfig {
            listen: SocketAddr::new(local_addr, 0),
            peers,
            local_addr,
            auth: link_auth(identity, joins, DeniedNodes::default())
                .unwrap_or_else(|error| panic!("{error}"))
                .0,
            identity: LocalIdentity {
                node_id: identity.node,
                incarnation: Incarnation::random(),
                name,
            },
            metrics: MeshMetrics::default(),
            timing: Default::default(),
        },
        tasks,
        stop.clone(),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"))
}

/// A node joins with a token through the CA holder's cluster port, gets a certificate for its
/// own key, and then links to the holder over mutual TLS; the token works once, and a token
/// pinning another CA never gets past TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_token_and_then_links_over_mutual_tls() {
    let now = time::OffsetDateTime::now_utc();
    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
    let (holder_id, joiner_id) = (NodeId::random(), NodeId::random());
    let holder = trust_dir("holder");
    holder
        .init(holder_id, now)
        .unwrap_or_else(|error| panic!("{error}"));
    let membership = holder
        .membership(holder_id)
        .unwrap_or_else(|error| panic!("{error}"));
    let joins = join::join_handler(holder.clone(), tasks.clone());
    let holder_mesh = member_mesh(
        &membership.identity,
        Some(joins),
        [127, 0, 0, 21],
        Vec::new(),
        &tasks,
        &stop,
    )
    .await;
    let port = holder_mesh.listen_addr();
    let token = holder
        .issue_token(now, Duration::from_secs(600))
        .unwrap_or_else(|error| panic!("{error}"));

    // A token of another cluster's CA: the holder's chain does not lead to it.
    let stranger = trust_dir("stranger");
    stranger
        .init(NodeId::random(), now)
        .unwrap_or_else(|error| panic!("{error}"));
    let foreign = stranger
        .issue_token(now, Duration::from_secs(600))
        .unwrap_or_else(|error| panic!("{error}"));
    let refused = join::join(port, &foreign, joiner_id, "joiner").await;
    assert!(
        matches!(refused, Err(join::JoinError::Tls(_))),
        "{:?}",
        refused.err()
    );

    let joined = join::join(port, &token, joiner_id, "joiner")
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let again = join::join(port, &token, NodeId::random(), "again").await;
    assert!(
        matches!(again, Err(join::JoinError::Refused(_))),
        "a token works once"
    );

    let joiner = trust_dir("joiner");
    joiner
        .install(
            &joined.cluster,
            &joined.ca_pems,
            &joined.key_pem,
            &joined.certificate_pem,
        )
        .unwrap_or_else(|error| panic!("{error}"));
    let joiner_membership = joiner
        .membership(joiner_id)
        .unwrap_or_else(|error| panic!("{error}"));
    // The joiner lists the holder; the holder does not list it (it admits by certificate).
    let joiner_mesh = member_mesh(
        &joiner_membership.identity,
        None,
        [127, 0, 0, 22],
        vec![port],
        &tasks,
        &stop,
    )
    .await;
    let mut peers = holder_mesh.subscribe();
    let linked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(MeshEvent::PeerUp(peer)) = peers.recv().await
                && peer.id == joiner_id
            {
                return;
            }
        }
    })
    .await;
    assert!(linked.is_ok(), "the joined node never linked to the holder");
    let both = tokio::time::timeout(Duration::from_secs(10), async {
        while !joiner_mesh.peers().iter().any(|peer| peer.id == holder_id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(both.is_ok(), "the joiner never saw the holder");
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    for dir in [holder.path(), joiner.path(), stranger.path()] {
        let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(dir));
    }
}
