//! A director's drain that drops nothing (issue 12 §2): before its VIPs move, the draining
//! director makes its own kernel keep delivering their packets ([`Receiving`]) and asks every
//! member to send back the packets of connections it did not see start ([`Forwarding`]),
//! waiting for each to confirm; then VRRP hands the VIPs over, the director keeps serving
//! its connections (each closes after its current response) and ends the second chance once
//! none is left, or at `drain_timeout`. Scanning nodes close what it relayed to them the same
//! way. A member forwards at most as long as the director said, and stops at once when the
//! director is confirmed dead (its clients then need their tickles, not a dead address).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_director::takeover::{self, HandoverStep};
use palisade_director::{DirectorMessage, Handover, HandoverPhase};
use palisade_identity::NodeId;
use palisade_vrrp::State;
use palisade_vrrp_linux::second_chance::{Forwarding, Receiving};

use super::{DirectorPlane, OwnReport};

/// How long a draining director waits for the members to confirm their forwarding.
const READY_WAIT: Duration = Duration::from_secs(2);

/// A drain's second chance, as this node takes part in it.
#[derive(Default)]
pub(super) struct Handovers {
    /// As a member: another director's connections sent back to it, by (group, director),
    /// until when.
    forwarding: HashMap<(u8, NodeId), (Forwarding, Instant)>,
    /// As the draining director: local delivery of each group's former VIPs.
    receiving: HashMap<u8, Receiving>,
}

/// Drops nftables state off the async workers (`nft` runs to remove it).
fn remove_later<T: Send + 'static>(removed: Vec<T>) {
    if !removed.is_empty() {
        tokio::task::spawn_blocking(move || drop(removed));
    }
}

impl DirectorPlane {
    fn handovers(&self) -> std::sync::MutexGuard<'_, Handovers> {
        self.handovers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Before this director's VIPs of group `vrid` move in a drain lasting at most `for_at_most`:
    /// its kernel keeps delivering their packets, and every linked member is asked to send
    /// back those of connections it did not see start. Returns the members that confirmed;
    /// `Err` says why there is no second chance (the VIP then moves anyway, and the
    /// connections through this director are reset, as with `--now`).
    pub async fn begin_handover(&self, vrid: u8, for_at_most: Duration) -> Result<usize, String> {
        let group = (self.groups.iter().find(|group| group.vrid == vrid))
            .ok_or_else(|| format!("no director for VRID {vrid}"))?;
        let (primary, vips) = {
            let status = group.status.borrow();
            if status.state != State::Master {
                return Err("not the director".to_owned());
            }
            (status.primary, status.vips.clone())
        };
        let mesh = (self.mesh.get()).ok_or("the director's links are not up yet")?;
        let receiving = Receiving::install(vrid, &vips, &group.settings.redirect_ports)
            .await
            .map_err(|error| error.to_string())?;
        self.handovers().receiving.insert(vrid, receiving);
        let members: HashSet<NodeId> = {
            let linked = self
                .linked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let state = group
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (state.scans.keys())
                .filter(|member| **member != self.me && linked.contains(member))
                .copied()
                .collect()
        };
        self.ready
            .send_modify(|ready| ready.retain(|(of, _)| *of != vrid));
        let for_ms = u32::try_from(for_at_most.as_millis()).unwrap_or(u32::MAX);
        mesh.broadcast_director(
            DirectorMessage::Handover(Handover {
                vrid,
                director: self.me,
                phase: HandoverPhase::Begin {
                    forward_to: primary,
                    for_ms,
                },
            })
            .encode(),
        );
        let mut ready = self.ready.subscribe();
        let all_ready = |ready: &HashSet<(u8, NodeId)>| {
            (members.iter()).all(|member| ready.contains(&(vrid, *member)))
        };
        let _ = tokio::time::timeout(READY_WAIT, ready.wait_for(all_ready)).await;
        let (confirmed, missing): (Vec<NodeId>, Vec<NodeId>) = {
            let ready = self.ready.borrow();
            (members.iter()).partition(|member| ready.contains(&(vrid, **member)))
        };
        if !missing.is_empty() {
            let missing: Vec<Arc<str>> = (missing.into_iter())
                .map(|member| self.name_of(member))
                .collect();
            tracing::warn!(instance = vrid, missing = ?missing, "drain: not every member confirmed it will send back this director's connections within {READY_WAIT:?}; if one of them takes the VIP, the connections through this director are reset");
        }
        Ok(confirmed.len())
    }

    /// This director's drain of group `vrid` is over (its connections ended or were cut):
    /// the members stop forwarding and its kernel stops delivering the former VIPs.
    pub fn end_handover(&self, vrid: u8) {
        let receiving = self.handovers().receiving.remove(&vrid);
        remove_later(receiving.into_iter().collect());
        if let Some(mesh) = self.mesh.get() {
            mesh.broadcast_director(
                DirectorMessage::Handover(Handover {
                    vrid,
                    director: self.me,
                    phase: HandoverPhase::Done,
                })
                .encode(),
            );
        }
    }

    /// A handover message from `from`.
    pub(super) fn received_handover(
        self: &Arc<Self>,
        from: NodeId,
        handover: Handover,
        own: &OwnReport,
    ) {
        let Some(group) = self.groups.iter().find(|group| group.vrid == handover.vrid) else {
            return;
        };
        let name = self.name_of(from);
        let master = group.status.borrow().master;
        match takeover::handover_step(self.me, from, &handover, master) {
            HandoverStep::Confirmed => self.ready.send_modify(|ready| {
                ready.insert((handover.vrid, from));
            }),
            HandoverStep::Ignore => {}
            HandoverStep::Refuse(why) => {
                tracing::warn!(instance = handover.vrid, node = %name, master = ?master, "director: handover from {name} refused: {why}; its connections are not sent back");
            }
            HandoverStep::Forward { to, for_at_most } => {
                if let Some(relayed) = &own.relayed {
                    relayed.close_director(from, for_at_most);
                }
                let (interface, vips) = {
                    let status = group.status.borrow();
                    (status.interface.clone(), status.vips.clone())
                };
                let ports = group.settings.redirect_ports.clone();
                let (plane, vrid) = (self.clone(), handover.vrid);
                tokio::spawn(async move {
                    match Forwarding::install(vrid, to, &interface, &vips, &ports).await {
                        Ok(forwarding) => {
                            tracing::info!(instance = vrid, director = %name, forward_to = %to, "director {name} drains: packets of its connections that reach this node go back to it for at most {for_at_most:?}");
                            let until = Instant::now() + for_at_most;
                            let replaced = plane
                                .handovers()
                                .forwarding
                                .insert((vrid, from), (forwarding, until));
                            remove_later(replaced.into_iter().collect());
                            if let Some(mesh) = plane.mesh.get() {
                                mesh.broadcast_director(
                                    DirectorMessage::Handover(Handover {
                                        vrid,
                                        director: from,
                                        phase: HandoverPhase::Ready,
                                    })
                                    .encode(),
                                );
                            }
                        }
                        Err(error) => {
                            tracing::warn!(instance = vrid, director = %name, %error, "director {name} drains, but this node cannot send its connections back to it: if this node takes the VIP, they are reset")
                        }
                    }
                });
            }
            HandoverStep::Stop => {
                let ended = self.handovers().forwarding.remove(&(handover.vrid, from));
                if ended.is_some() {
                    tracing::info!(instance = handover.vrid, director = %name, "director {name} finished its drain: its connections are no longer sent back to it");
                }
                remove_later(ended.into_iter().collect());
                if let Some(relayed) = &own.relayed {
                    relayed.resume_director(from);
                }
            }
        }
    }

    /// Forwarding whose time is up, or to a director confirmed dead (`dead`), ends: a dead
    /// director's clients need their tickles answered by this node's kernel.
    pub(super) fn expire_forwarding(&self, dead: Option<NodeId>) {
        let now = Instant::now();
        let mut handovers = self.handovers();
        let ended: Vec<(u8, NodeId)> = (handovers.forwarding.iter())
            .filter(|((_, director), (_, until))| *until <= now || Some(*director) == dead)
            .map(|(key, _)| *key)
            .collect();
        let removed: Vec<_> = (ended.iter())
            .filter_map(|key| handovers.forwarding.remove(key))
            .collect();
        drop(handovers);
        for (vrid, director) in ended {
            tracing::info!(instance = vrid, director = %self.name_of(director), "no longer sending a drained director's connections back to it");
        }
        remove_later(removed);
    }
}
