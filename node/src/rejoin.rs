//! A node that starts with an empty data directory votes only once it holds
//! what it may have acknowledged before.
//!
//! Raft counts on every voter remembering its log. A node whose disk was
//! wiped or replaced forgets entries it once acknowledged: if it then voted
//! for a candidate missing them, the candidate could win and committed
//! entries would be lost. So a node that finds its data directory empty
//! starts *cautious*: in every group it neither campaigns nor grants votes
//! (nor takes a leadership transfer) until it has applied the commit index
//! of the first append its group's leader sent it. Appends still count
//! towards commits: a replica acknowledges only entries it has fsynced.
//!
//! Having forgotten its term, it could also acknowledge appends of a stale
//! leader (one partitioned away, of an older term) and complete a quorum
//! for entries the current leader's quorum overwrote. So before it takes
//! any append, a cautious replica learns a *term floor*: the highest
//! current term that a majority of the group's replicas, counted without
//! itself, report on node heartbeats, and it refuses appends of lower terms.
//! Any election that could have counted its forgotten vote was won with a
//! majority that, without this node, still shares a node with every such
//! set of reporters, so the floor is at least the term of every leader that
//! could have been elected. Once it took an append at or above the floor,
//! openraft's own persisted vote rejects older leaders.
//!
//! A brand-new cluster starts empty too. Its nodes learn from the node
//! heartbeats that a majority has formed no cluster yet (no node holds a
//! bootstrapped metadata group) and then drop the caution: a formed cluster
//! committed its bootstrap on a majority, which shares a node with any
//! other majority, so only a new cluster can show that, as long as no
//! node but this one lost its data.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;

use parking_lot::Mutex;

use crate::model::GroupId;
use crate::model::NodeId;

#[derive(Debug)]
pub struct Rejoin {
    state: Mutex<State>,
    /// Voters of the cluster, this node included.
    cluster_size: usize,
    me: NodeId,
}

#[derive(Debug, Default)]
struct State {
    /// Whether groups started now start cautious.
    active: bool,
    /// Some peer holds a formed cluster: this node must catch up.
    formed_elsewhere: bool,
    /// Peers that report no formed cluster.
    unformed_peers: BTreeSet<NodeId>,
    /// Cautious groups → the leader's commit index from its first append,
    /// and whether this node is the group's preferred leader.
    groups: HashMap<GroupId, Cautious>,
    /// Groups a new cluster released, not yet handed back by
    /// `release_caught_up`.
    released: Vec<Released>,
}

#[derive(Debug, Clone, Default)]
struct Cautious {
    target: Option<u64>,
    /// The group's first membership, which a cautious replica does not
    /// write itself: a new cluster's node writes it once released; a node
    /// that lost its data gets it from the leader's log.
    members: Members,
    preferred: bool,
    /// The group's current term as other replicas reported it.
    terms_reported: BTreeMap<NodeId, u64>,
    /// Once enough replicas reported: appends of lower terms are refused.
    term_floor: Option<u64>,
}

/// Node id → peer address.
pub type Members = BTreeMap<NodeId, String>;

/// Why a cautious replica does not take an append.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppendRefused {
    #[error(
        "this replica started with an empty data directory and is still learning the group's \
         current term from the other replicas"
    )]
    LearningTerm,
    #[error(
        "the leader's term {term} is older than term {floor}, which a majority of the other \
         replicas reached: a stale leader"
    )]
    StaleLeader { term: u64, floor: u64 },
}

/// A group that may vote again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub group: GroupId,
    /// Released because the cluster is new: the group still has to be
    /// initialized with these members, and its preferred leader (this node
    /// when `preferred`) may start the first election.
    pub initialize: Option<Members>,
    pub preferred: bool,
}

impl Rejoin {
    /// `empty_data_dir`: the node found no database when it started, or
    /// restarted before it had caught up after such a start.
    pub fn new(me: NodeId, empty_data_dir: bool, cluster_size: usize) -> Rejoin {
        Rejoin {
            state: Mutex::new(State {
                // A cluster of one has nobody to learn from.
                active: empty_data_dir && cluster_size > 1,
                ..State::default()
            }),
            cluster_size,
            me,
        }
    }

    /// Registers a group being started; whether it starts cautious (then
    /// it neither initializes nor campaigns until released).
    pub fn on_group_started(&self, group: GroupId, members: &Members, preferred: bool) -> bool {
        let mut state = self.state.lock();
        if state.active {
            state.groups.insert(
                group,
                Cautious {
                    target: None,
                    members: members.clone(),
                    preferred,
                    terms_reported: BTreeMap::new(),
                    term_floor: None,
                },
            );
        }
        state.active
    }

    /// Whether groups started now start cautious: after an empty start,
    /// until this is a new cluster or every group has caught up.
    pub fn is_active(&self) -> bool {
        self.state.lock().active
    }

    pub fn is_cautious(&self, group: GroupId) -> bool {
        self.state.lock().groups.contains_key(&group)
    }

    /// A peer's heartbeat answer: whether it holds a formed cluster.
    pub fn on_peer(&self, peer: NodeId, formed: bool) {
        let mut state = self.state.lock();
        if !state.active || state.formed_elsewhere {
            return;
        }
        if formed {
            state.formed_elsewhere = true;
            return;
        }
        state.unformed_peers.insert(peer);
        // With this node, a majority has no cluster: a cluster formed
        // without them would have committed its first entry on one of them.
        if state.unformed_peers.len() + 1 > self.cluster_size / 2 {
            tracing::info!("a majority of the nodes is new: this is a new cluster");
            state.active = false;
            let released: Vec<Released> = state
                .groups
                .drain()
                .map(|(group, c)| Released {
                    group,
                    initialize: Some(c.members),
                    preferred: c.preferred,
                })
                .collect();
            state.released.extend(released);
        }
    }

    /// Cautious groups whose term floor is not known yet: node heartbeats
    /// ask peers for their current term in them.
    pub fn groups_learning_terms(&self) -> Vec<GroupId> {
        let state = self.state.lock();
        let mut groups: Vec<GroupId> = state
            .groups
            .iter()
            .filter(|(_, c)| c.term_floor.is_none())
            .map(|(group, _)| *group)
            .collect();
        groups.sort_unstable();
        groups
    }

    /// A peer's current terms in groups this node asked about. A peer that
    /// is not a replica of a group does not count for it.
    pub fn on_terms(&self, peer: NodeId, terms: impl IntoIterator<Item = (GroupId, u64)>) {
        let mut state = self.state.lock();
        for (group, term) in terms {
            let Some(cautious) = state.groups.get_mut(&group) else {
                continue;
            };
            if cautious.term_floor.is_some() || peer == self.me {
                continue;
            }
            if !cautious.members.contains_key(&peer) {
                continue;
            }
            cautious.terms_reported.insert(peer, term);
            // Reporters needed: more than the other replicas an election
            // quorum may hold besides this node (`replicas / 2`).
            let replicas = cautious.members.len().max(1);
            let needed = replicas - replicas / 2;
            if cautious.terms_reported.len() >= needed {
                let floor = cautious.terms_reported.values().copied().max().unwrap_or(0);
                tracing::debug!(
                    group = group.0,
                    floor,
                    "learnt the term floor after an empty start"
                );
                cautious.term_floor = Some(floor);
            }
        }
    }

    /// Whether an append of a leader of `term` may reach group `group`: a
    /// cautious group takes none until it knows its term floor, then none
    /// below it.
    pub fn may_append(&self, group: GroupId, term: u64) -> Result<(), AppendRefused> {
        let state = self.state.lock();
        let Some(cautious) = state.groups.get(&group) else {
            return Ok(());
        };
        match cautious.term_floor {
            Some(floor) if term >= floor => Ok(()),
            Some(floor) => Err(AppendRefused::StaleLeader { term, floor }),
            None => Err(AppendRefused::LearningTerm),
        }
    }

    /// The leader's commit index on an append to a cautious group; the
    /// first one is what the group must apply.
    pub fn on_append(&self, group: GroupId, leader_commit: Option<u64>) {
        let mut state = self.state.lock();
        if let Some(cautious) = state.groups.get_mut(&group)
            && cautious.target.is_none()
        {
            cautious.target = leader_commit;
        }
    }

    /// Releases the cautious groups whose `applied` index (by `applied`)
    /// reached their target, and those a new cluster released; returns
    /// them. Once none is left after a peer showed a formed cluster, groups
    /// start normally again.
    pub fn release_caught_up(&self, applied: impl Fn(GroupId) -> Option<u64>) -> Vec<Released> {
        let mut state = self.state.lock();
        let caught_up: Vec<Released> = state
            .groups
            .iter()
            .filter(|(group, c)| {
                c.target
                    .is_some_and(|t| applied(**group).is_some_and(|a| a >= t))
            })
            // A group that caught up follows a leader: its membership came
            // with the leader's log, and no election is due.
            .map(|(group, _)| Released {
                group: *group,
                initialize: None,
                preferred: false,
            })
            .collect();
        for released in &caught_up {
            state.groups.remove(&released.group);
        }
        if state.formed_elsewhere && state.groups.is_empty() && !caught_up.is_empty() {
            tracing::info!("every group has caught up: this node votes again");
            state.active = false;
        }
        let mut released = std::mem::take(&mut state.released);
        released.extend(caught_up);
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_new_nodes_is_a_new_cluster() {
        let rejoin = Rejoin::new(NodeId(1), true, 3);
        let members: Members = [
            (NodeId(1), "a:1".to_string()),
            (NodeId(2), "b:1".to_string()),
        ]
        .into();
        assert!(rejoin.on_group_started(GroupId(0), &members, true));
        assert!(rejoin.is_cautious(GroupId(0)));
        rejoin.on_peer(NodeId(2), false);
        assert!(!rejoin.is_cautious(GroupId(0)));
        assert!(!rejoin.on_group_started(GroupId(7), &members, false));
        // The group it held back is initialized now, and its preferred
        // leader may campaign.
        let released = rejoin.release_caught_up(|_| None);
        assert_eq!(
            released,
            vec![Released {
                group: GroupId(0),
                initialize: Some(members),
                preferred: true
            }]
        );
        assert!(rejoin.release_caught_up(|_| None).is_empty());
    }

    #[test]
    fn a_wiped_node_votes_only_after_applying_its_leaders_commit_index() {
        let rejoin = Rejoin::new(NodeId(1), true, 3);
        assert!(rejoin.on_group_started(GroupId(0), &Members::new(), false));
        rejoin.on_peer(NodeId(2), true);
        // A peer with no cluster does not outweigh one with a cluster.
        rejoin.on_peer(NodeId(3), false);
        assert!(rejoin.is_cautious(GroupId(0)));
        // No append yet: nothing to measure against.
        assert!(rejoin.release_caught_up(|_| Some(100)).is_empty());
        rejoin.on_append(GroupId(0), Some(40));
        // A later append's commit index does not move the target.
        rejoin.on_append(GroupId(0), Some(90));
        assert!(rejoin.release_caught_up(|_| Some(39)).is_empty());
        let released = rejoin.release_caught_up(|_| Some(40));
        assert_eq!(
            released.iter().map(|r| r.group).collect::<Vec<_>>(),
            vec![GroupId(0)]
        );
        assert!(!rejoin.is_cautious(GroupId(0)));
        assert!(released[0].initialize.is_none());
        assert!(!rejoin.on_group_started(GroupId(5), &Members::new(), false));
    }

    #[test]
    fn a_wiped_replica_takes_appends_only_at_or_above_the_term_a_majority_reached() {
        // Node 3 of replicas 1, 2, 3 lost its data.
        let rejoin = Rejoin::new(NodeId(3), true, 3);
        let replicas: Members = (1..=3).map(|id| (NodeId(id), format!("n{id}:1"))).collect();
        assert!(rejoin.on_group_started(GroupId(7), &replicas, false));
        rejoin.on_peer(NodeId(1), true);
        assert_eq!(rejoin.groups_learning_terms(), vec![GroupId(7)]);
        assert_eq!(
            rejoin.may_append(GroupId(7), 9),
            Err(AppendRefused::LearningTerm)
        );
        // Node 1 was partitioned away as leader of term 5; node 2 leads
        // term 6, possibly elected with node 3's forgotten vote. Neither
        // one report, nor a node that is no replica, fixes the floor.
        rejoin.on_terms(NodeId(1), [(GroupId(7), 5)]);
        rejoin.on_terms(NodeId(4), [(GroupId(7), 1)]);
        rejoin.on_terms(NodeId(3), [(GroupId(7), 0)]);
        assert_eq!(
            rejoin.may_append(GroupId(7), 5),
            Err(AppendRefused::LearningTerm)
        );
        rejoin.on_terms(NodeId(2), [(GroupId(7), 6)]);
        assert!(rejoin.groups_learning_terms().is_empty());
        assert_eq!(
            rejoin.may_append(GroupId(7), 5),
            Err(AppendRefused::StaleLeader { term: 5, floor: 6 })
        );
        assert_eq!(rejoin.may_append(GroupId(7), 6), Ok(()));
        // Later reports do not move it.
        rejoin.on_terms(NodeId(1), [(GroupId(7), 8)]);
        assert_eq!(rejoin.may_append(GroupId(7), 7), Ok(()));
        // Groups that are not cautious take every append.
        assert_eq!(rejoin.may_append(GroupId(8), 1), Ok(()));
    }

    #[test]
    fn five_replicas_need_three_reports() {
        let rejoin = Rejoin::new(NodeId(5), true, 5);
        let replicas: Members = (1..=5).map(|id| (NodeId(id), format!("n{id}:1"))).collect();
        assert!(rejoin.on_group_started(GroupId(2), &replicas, false));
        rejoin.on_terms(NodeId(1), [(GroupId(2), 3)]);
        rejoin.on_terms(NodeId(2), [(GroupId(2), 4)]);
        assert_eq!(
            rejoin.may_append(GroupId(2), 4),
            Err(AppendRefused::LearningTerm)
        );
        rejoin.on_terms(NodeId(3), [(GroupId(2), 2)]);
        assert_eq!(rejoin.may_append(GroupId(2), 4), Ok(()));
        assert!(rejoin.may_append(GroupId(2), 3).is_err());
    }

    #[test]
    fn a_node_with_data_or_alone_is_never_cautious() {
        assert!(!Rejoin::new(NodeId(1), false, 3).on_group_started(
            GroupId(0),
            &Members::new(),
            true
        ));
        assert!(!Rejoin::new(NodeId(1), true, 1).on_group_started(
            GroupId(0),
            &Members::new(),
            true
        ));
    }
}
