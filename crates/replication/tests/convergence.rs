//! Replication in the simulator: whatever the delivery order, loss, duplication, partitions
//! and clock skew (within the allowed difference), every node ends with the same head, it is
//! the one the seeds' rule picks among the latest saves, and no save is lost from history.

use std::time::Duration;

use palisade_replication::sim::{Cluster, Network};
use palisade_replication::{Revision, RevisionKind};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Save {
        node: usize,
    },
    /// The node cannot install its head (a member whose build cannot compile it).
    Refuse {
        node: usize,
    },
    Split {
        side: Vec<usize>,
    },
    Heal,
    Wait {
        ms: u64,
    },
}

fn step(nodes: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..nodes).prop_map(|node| Step::Save { node }),
        1 => (0..nodes).prop_map(|node| Step::Refuse { node }),
        1 => proptest::collection::vec(0..nodes, 1..nodes).prop_map(|side| Step::Split { side }),
        1 => Just(Step::Heal),
        3 => (1u64..3_000).prop_map(|ms| Step::Wait { ms }),
    ]
}

/// The unrefused saves no other unrefused save builds on (through merges and refused saves
/// too), from one node's history.
fn latest_saves(cluster: &Cluster) -> Vec<Revision> {
    let history = &cluster.nodes[0].history();
    let saves: Vec<&Revision> = history
        .revisions()
        .filter(|revision| revision.kind == RevisionKind::Save && !history.is_refused(&revision.id))
        .collect();
    saves
        .iter()
        .filter(|save| {
            !saves
                .iter()
                .any(|other| other.id != save.id && history.is_ancestor(&save.id, &other.id))
        })
        .map(|save| (*save).clone())
        .collect()
}

fn scenario(
    priorities: Vec<u16>,
    skews: Vec<i64>,
    steps: Vec<Step>,
    seed: u64,
    lossy: bool,
) -> Result<(), TestCaseError> {
    let nodes: Vec<(u16, i64)> = priorities.iter().copied().zip(skews).collect();
    let network = Network {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(200),
        loss_ppm: if lossy { 200_000 } else { 0 },
        duplicate_ppm: if lossy { 100_000 } else { 0 },
        digest_interval: Duration::from_secs(5),
    };
    let mut cluster = Cluster::new(&nodes, network, seed, 1_800_000_000_000);
    let mut saved = Vec::new();
    let mut refused = Vec::new();
    for (index, step) in steps.into_iter().enumerate() {
        match step {
            Step::Save { node } => {
                saved.push(cluster.save(node, &format!("policy {index} from node {node}")))
            }
            Step::Refuse { node } => {
                if let Some(save) = cluster.refuse(node) {
                    refused.push(save);
                }
            }
            Step::Split { side } => cluster.split(&side),
            Step::Heal => cluster.heal(),
            Step::Wait { ms } => cluster.run_for(Duration::from_millis(ms)),
        }
    }
    // The partition heals and the network behaves: anti-entropy must finish the job.
    cluster.heal();
    cluster.set_network(Network {
        loss_ppm: 0,
        duplicate_ppm: 0,
        ..network
    });
    cluster.run_for(Duration::from_secs(30));
    if saved.is_empty() {
        return Ok(());
    }
    // A refused save is nobody's head, unless a later save built on it before its refusal
    // arrived (then that save carries it, and the refusal no longer matters).
    for node in &cluster.nodes {
        for id in &refused {
            let history = node.history();
            let built_on = history.revisions().any(|other| {
                other.kind == RevisionKind::Save
                    && other.id != *id
                    && history.is_ancestor(id, &other.id)
            });
            prop_assert!(
                built_on || node.history().is_refused(id),
                "a refusal that matters did not spread"
            );
        }
    }
    if latest_saves(&cluster).is_empty() {
        // Everything was refused: no node has a head (each keeps the policy it runs).
        for node in &cluster.nodes {
            prop_assert!(node.replica.head().is_none());
        }
        return Ok(());
    }
    let head = cluster.converged();
    prop_assert!(
        head.is_some(),
        "no common head: {:?}",
        cluster
            .nodes
            .iter()
            .map(|n| n.history().frontier().map(|h| h.id).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    for node in &cluster.nodes {
        for id in &saved {
            prop_assert!(
                node.history().contains(id),
                "a save is missing from a node's history"
            );
        }
        prop_assert_eq!(node.refused, 0);
        // Every revision held was handed over for storing exactly once, parents first.
        prop_assert_eq!(node.persisted.len(), node.history().len());
        let mut stored = std::collections::HashSet::new();
        for id in &node.persisted {
            let Some(revision) = node.history().get(id) else {
                return Err(TestCaseError::fail("persisted a revision not held"));
            };
            prop_assert!(
                revision
                    .parents
                    .iter()
                    .all(|parent| stored.contains(parent))
            );
            stored.insert(*id);
        }
    }
    let latest = latest_saves(&cluster);
    let Some(winner) = latest
        .iter()
        .reduce(|best, next| if next.wins_over(best) { next } else { best })
    else {
        return Err(TestCaseError::fail("no latest save"));
    };
    let head = cluster.nodes[0].history().head().map(|head| head.content);
    prop_assert_eq!(head, Some(winner.content));
    // The rule by hand, not through `wins_over`: lowest priority value, then newest time,
    // then lowest node id.
    let by_hand = latest
        .iter()
        .min_by(|x, y| {
            x.author_priority
                .value()
                .cmp(&y.author_priority.value())
                .then(y.time.cmp(&x.time))
                .then(x.author.cmp(&y.author))
        })
        .map(|revision| revision.content);
    prop_assert_eq!(by_hand, Some(winner.content));
    // The head does not depend on arrival order: the whole history, fed to a fresh one in
    // reverse order (children before parents), gives the same head.
    let mut all: Vec<Revision> = cluster.nodes[0].history().revisions().cloned().collect();
    all.sort_by_key(|revision| (std::cmp::Reverse(revision.time), revision.id));
    let mut fresh = palisade_replication::History::new();
    for revision in all {
        prop_assert!(fresh.insert(revision).is_ok());
    }
    prop_assert_eq!(fresh.pending(), 0);
    fresh.settle();
    prop_assert_eq!(fresh.head().map(|head| head.id), cluster.converged());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_node_converges_on_the_rules_head_and_keeps_every_save(
        nodes in 2usize..6,
        seed in any::<u64>(),
        lossy in any::<bool>(),
        raw_steps in proptest::collection::vec(step(5), 1..40),
        priorities in proptest::collection::vec(1u16..4, 5),
        skews in proptest::collection::vec(-60_000i64..60_000, 5),
    ) {
        let steps: Vec<Step> = raw_steps
            .into_iter()
            .map(|step| match step {
                Step::Save { node } => Step::Save { node: node % nodes },
                Step::Refuse { node } => Step::Refuse { node: node % nodes },
                Step::Split { side } => Step::Split { side: side.into_iter().map(|n| n % nodes).collect() },
                other => other,
            })
            .collect();
        scenario(priorities[..nodes].to_vec(), skews[..nodes].to_vec(), steps, seed, lossy)?;
    }
}

#[test]
fn a_partition_with_saves_on_both_sides_heals_to_the_better_priority_with_the_loser_kept() {
    // node0 priority 1, node1 and node2 priority 2.
    let mut cluster = Cluster::new(
        &[(1, 0), (2, 0), (2, 0)],
        Network::default(),
        1,
        1_800_000_000_000,
    );
    cluster.save(2, "first");
    cluster.run_for(Duration::from_secs(1));
    cluster.split(&[0]);
    let older = cluster.save(0, "saved on priority 1");
    cluster.run_for(Duration::from_secs(10));
    let newer = cluster.save(1, "saved later on priority 2");
    cluster.run_for(Duration::from_secs(10));
    cluster.heal();
    cluster.run_for(Duration::from_secs(10));
    let Some(head) = cluster.converged() else {
        panic!("no common head");
    };
    for node in &cluster.nodes {
        let head = node.history().get(&head).cloned();
        let winner = node.history().get(&older).map(|revision| revision.content);
        assert_eq!(
            head.map(|head| head.content),
            winner,
            "priority 1 wins although older"
        );
        assert!(
            node.history().contains(&newer),
            "the loser stays in history"
        );
    }
    let settled: Vec<_> = cluster
        .nodes
        .iter()
        .flat_map(|node| node.settled.clone())
        .collect();
    assert!(
        !settled.is_empty()
            && settled
                .iter()
                .all(|s| s.winner == older && s.losers == vec![newer])
    );
}

#[test]
fn a_node_whose_clock_is_too_far_ahead_is_refused() {
    // node1's clock runs three minutes ahead; two are allowed.
    let mut cluster = Cluster::new(
        &[(1, 0), (1, 180_000)],
        Network::default(),
        1,
        1_800_000_000_000,
    );
    let ahead = cluster.save(1, "from the future");
    cluster.run_for(Duration::from_secs(20));
    assert!(!cluster.nodes[0].history().contains(&ahead));
    assert!(cluster.nodes[0].refused > 0);
}

/// After a partition heals, the nodes that lack the winning save's content ask the peers in
/// turn, each answering at once whether it holds it: every node has the head's content
/// within a second (links of 1-10 ms), not a digest interval (5 s) or more later.
#[test]
fn after_a_heal_every_node_has_the_head_content_within_a_second() {
    for nodes in [5, 50] {
        let specs: Vec<(u16, i64)> = (0..nodes).map(|_| (100, 0)).collect();
        let network = Network {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(10),
            ..Network::default()
        };
        let mut cluster = Cluster::new(&specs, network, 3, 1_800_000_000_000);
        cluster.save(0, "first");
        assert!(
            cluster
                .run_until_converged(Duration::from_secs(60))
                .is_some()
        );
        let half: Vec<usize> = (0..nodes / 2).collect();
        cluster.split(&half);
        cluster.save(0, "left side");
        cluster.save(nodes - 1, "right side");
        cluster.run_for(Duration::from_secs(10));
        cluster.heal();
        let took = cluster.run_until_converged(Duration::from_secs(1));
        assert!(
            took.is_some(),
            "{nodes} nodes not converged within 1 s of the heal"
        );
    }
}
