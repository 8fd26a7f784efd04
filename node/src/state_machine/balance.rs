//! The balancer's plan: which partitions to move so that no replica sits
//! on a node being removed (or no longer a voter), replicas spread evenly
//! over the voters, and so do preferred leaders (a partition's first
//! replica, which its leadership is handed back to). Pure: the metadata
//! leader proposes the moves it returns as `MovePartition` commands.

use std::collections::BTreeMap;

use crate::model::GroupId;
use crate::model::NodeId;
use crate::raft::types::MetaState;

/// Up to `limit` moves, each a group and the replicas it should have
/// (preferred leader first). Groups already moving are left alone and
/// counted at their target. Deterministic for the same input.
pub fn plan_moves(
    state: &MetaState,
    voters: &[NodeId],
    limit: usize,
) -> Vec<(GroupId, Vec<NodeId>)> {
    plan(state, voters, limit, state.balancing)
}

/// The moves: off nodes that may not hold replicas always, and, with
/// `spread`, towards an even spread.
fn plan(
    state: &MetaState,
    voters: &[NodeId],
    limit: usize,
    spread: bool,
) -> Vec<(GroupId, Vec<NodeId>)> {
    let eligible: Vec<NodeId> = voters
        .iter()
        .filter(|node| !state.draining.contains(node))
        .copied()
        .collect();
    if eligible.is_empty() || limit == 0 {
        return Vec::new();
    }
    let mut placement: BTreeMap<GroupId, Vec<NodeId>> = BTreeMap::new();
    for topic in state.topics.values() {
        for (p, replicas) in topic.partitions.iter().enumerate() {
            let group = topic.group_id(p as u32);
            let current = state.moves.get(&group).unwrap_or(replicas);
            placement.insert(group, current.clone());
        }
    }
    let mut plan = Plan {
        eligible,
        placement,
        fixed: state.moves.keys().copied().collect(),
        moves: Vec::new(),
        limit,
    };
    plan.evacuate();
    if spread {
        plan.spread(|replicas| replicas.to_vec(), Plan::replace);
        plan.spread(
            |replicas| replicas.first().copied().into_iter().collect(),
            Plan::promote,
        );
    }
    plan.moves
}

struct Plan {
    eligible: Vec<NodeId>,
    placement: BTreeMap<GroupId, Vec<NodeId>>,
    /// Groups moving already, or moved by this plan.
    fixed: std::collections::BTreeSet<GroupId>,
    moves: Vec<(GroupId, Vec<NodeId>)>,
    limit: usize,
}

impl Plan {
    fn full(&self) -> bool {
        self.moves.len() >= self.limit
    }

    fn set(&mut self, group: GroupId, replicas: Vec<NodeId>) {
        self.placement.insert(group, replicas.clone());
        self.fixed.insert(group);
        self.moves.push((group, replicas));
    }

    /// How many of `counted(replicas)` each eligible node is, over all
    /// partitions.
    fn counts(&self, counted: impl Fn(&[NodeId]) -> Vec<NodeId>) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> =
            self.eligible.iter().map(|node| (*node, 0)).collect();
        for replicas in self.placement.values() {
            for node in counted(replicas) {
                if let Some(count) = counts.get_mut(&node) {
                    *count += 1;
                }
            }
        }
        counts
    }

    /// Replaces every replica on a node that may not hold one with the
    /// eligible node holding fewest, in the same position.
    fn evacuate(&mut self) {
        let groups: Vec<GroupId> = self.placement.keys().copied().collect();
        for group in groups {
            if self.full() || self.fixed.contains(&group) {
                continue;
            }
            let mut replicas = self.placement[&group].clone();
            let mut changed = false;
            for position in 0..replicas.len() {
                if self.eligible.contains(&replicas[position]) {
                    continue;
                }
                let counts = self.counts(|replicas| replicas.to_vec());
                let Some(target) = least_loaded(&counts, |node| !replicas.contains(node)) else {
                    break;
                };
                replicas[position] = target;
                changed = true;
            }
            if changed && replicas.iter().all(|node| self.eligible.contains(node)) {
                self.set(group, replicas);
            }
        }
    }

    /// While the most loaded node (by `counted`) holds two or more than the
    /// least loaded, moves one partition's role from the first to the
    /// second with `apply`.
    fn spread(
        &mut self,
        counted: impl Fn(&[NodeId]) -> Vec<NodeId> + Copy,
        apply: fn(&[NodeId], NodeId, NodeId) -> Option<Vec<NodeId>>,
    ) {
        // Each move lowers the spread; the bound only guards the loop.
        for _ in 0..self.placement.len() {
            if self.full() {
                return;
            }
            let counts = self.counts(counted);
            let Some((&most, &high)) = counts.iter().max_by_key(|(node, count)| (**count, *node))
            else {
                return;
            };
            let Some((&least, &low)) = counts.iter().min_by_key(|(node, count)| (**count, *node))
            else {
                return;
            };
            if high <= low + 1 {
                return;
            }
            let found = self.placement.iter().find_map(|(group, replicas)| {
                if self.fixed.contains(group) {
                    return None;
                }
                apply(replicas, most, least).map(|moved| (*group, moved))
            });
            match found {
                Some((group, replicas)) => self.set(group, replicas),
                None => return,
            }
        }
    }

    /// `from`'s replica handed to `to`, which holds none of this partition.
    fn replace(replicas: &[NodeId], from: NodeId, to: NodeId) -> Option<Vec<NodeId>> {
        if !replicas.contains(&from) || replicas.contains(&to) {
            return None;
        }
        Some(
            replicas
                .iter()
                .map(|node| if *node == from { to } else { *node })
                .collect(),
        )
    }

    /// `to`, a replica already, made the preferred leader instead of `from`.
    fn promote(replicas: &[NodeId], from: NodeId, to: NodeId) -> Option<Vec<NodeId>> {
        if replicas.first() != Some(&from) || !replicas.contains(&to) {
            return None;
        }
        let mut promoted = vec![to];
        promoted.extend(replicas.iter().copied().filter(|node| *node != to));
        Some(promoted)
    }
}

fn least_loaded(
    counts: &BTreeMap<NodeId, usize>,
    allowed: impl Fn(&NodeId) -> bool,
) -> Option<NodeId> {
    counts
        .iter()
        .filter(|(node, _)| allowed(node))
        .min_by_key(|(node, count)| (**count, **node))
        .map(|(node, _)| *node)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::raft::types::MetaCommand;
    use crate::state_machine::meta;

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().map(|id| NodeId(*id)).collect()
    }

    fn cluster_with_topic(voters: &[NodeId], partitions: u32, rf: u32) -> MetaState {
        let mut state = MetaState::default();
        let spec = meta::spec("t", partitions, rf);
        meta::apply(
            &mut state,
            &MetaCommand::CreateTopic { spec, now_ms: 1 },
            voters,
        );
        state.balancing = true;
        state
    }

    /// Applies the plan's moves as the cluster would (move, then its
    /// completion), until the balancer has nothing left to do.
    fn settle(state: &mut MetaState, voters: &[NodeId]) -> usize {
        let mut rounds = 0;
        loop {
            let moves = plan_moves(state, voters, 4);
            if moves.is_empty() {
                return rounds;
            }
            rounds += 1;
            assert!(rounds < 100, "the balancer does not settle");
            for (group, replicas) in moves {
                for command in [
                    MetaCommand::MovePartition {
                        group,
                        replicas: replicas.clone(),
                    },
                    MetaCommand::CompletePartitionMove { group, replicas },
                ] {
                    let response = meta::apply(state, &command, voters);
                    assert!(
                        !matches!(
                            response,
                            crate::raft::types::CommandResponse::MetaRejected(_)
                        ),
                        "{command:?}: {response:?}"
                    );
                }
            }
        }
    }

    fn spread(state: &MetaState, voters: &[NodeId], leaders: bool) -> (usize, usize) {
        let mut counts: BTreeMap<NodeId, usize> = voters.iter().map(|n| (*n, 0)).collect();
        for topic in state.topics.values() {
            for replicas in &topic.partitions {
                let counted = if leaders {
                    &replicas[..1]
                } else {
                    &replicas[..]
                };
                for node in counted {
                    *counts.entry(*node).or_default() += 1;
                }
            }
        }
        (
            *counts.values().min().unwrap(),
            *counts.values().max().unwrap(),
        )
    }

    #[test]
    fn a_new_node_gets_its_share_of_replicas_and_leaders() {
        let three = nodes(&[1, 2, 3]);
        let mut state = cluster_with_topic(&three, 12, 3);
        let four = nodes(&[1, 2, 3, 4]);
        assert_eq!(spread(&state, &four, false), (0, 12));
        settle(&mut state, &four);
        assert_eq!(spread(&state, &four, false), (9, 9));
        let (low, high) = spread(&state, &four, true);
        assert!(high - low <= 1, "leaders {low}..{high}");
        assert!(state.moved.len() >= 9, "the new node took over 9 replicas");
    }

    #[test]
    fn a_draining_node_is_emptied_and_the_rest_stays_balanced() {
        let four = nodes(&[1, 2, 3, 4]);
        let mut state = cluster_with_topic(&four, 8, 3);
        meta::apply(
            &mut state,
            &MetaCommand::SetNodeDraining {
                node: NodeId(2),
                draining: true,
            },
            &four,
        );
        settle(&mut state, &four);
        for topic in state.topics.values() {
            for replicas in &topic.partitions {
                assert!(!replicas.contains(&NodeId(2)), "{replicas:?}");
            }
        }
        let rest = nodes(&[1, 3, 4]);
        assert_eq!(spread(&state, &rest, false), (8, 8));
    }

    #[test]
    fn nothing_moves_when_there_is_nowhere_to_go_or_all_is_even() {
        let three = nodes(&[1, 2, 3]);
        let mut state = cluster_with_topic(&three, 6, 3);
        assert!(plan_moves(&state, &three, 8).is_empty());
        // Without balancing asked for, a new node gets nothing.
        let four = nodes(&[1, 2, 3, 4]);
        state.balancing = false;
        assert!(plan_moves(&state, &four, 8).is_empty());
        // Replication factor 3 on three nodes: a draining node's replicas
        // have nowhere else to go.
        state.draining.insert(NodeId(3));
        assert!(plan_moves(&state, &three, 8).is_empty());
    }

    #[test]
    fn pending_moves_are_not_planned_again_and_the_limit_holds() {
        let three = nodes(&[1, 2, 3]);
        let mut state = cluster_with_topic(&three, 12, 3);
        let four = nodes(&[1, 2, 3, 4]);
        let first = plan_moves(&state, &four, 2);
        assert_eq!(first.len(), 2);
        for (group, replicas) in &first {
            meta::apply(
                &mut state,
                &MetaCommand::MovePartition {
                    group: *group,
                    replicas: replicas.clone(),
                },
                &four,
            );
        }
        let second = plan_moves(&state, &four, 2);
        assert_eq!(second.len(), 2);
        assert!(
            second
                .iter()
                .all(|(group, _)| !state.moves.contains_key(group))
        );
    }
}
