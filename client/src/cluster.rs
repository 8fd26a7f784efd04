//! Reading a cluster status: how evenly replicas and leaders are spread.

use crate::pb;

/// How evenly the cluster is spread: the most minus the fewest per node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Spread {
    pub replicas: u32,
    pub leaders: u32,
}

/// The spread over the nodes the balancer fills: voters not draining. A
/// joining node (not a voter yet) or one being removed would make any
/// cluster look uneven.
pub fn spread(status: &pb::ClusterStatusResponse) -> Spread {
    let balanced: Vec<&pb::NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| n.voter && !n.draining)
        .collect();
    let range = |count: fn(&pb::NodeStatus) -> u32| {
        let most = balanced.iter().map(|n| count(n)).max().unwrap_or(0);
        let fewest = balanced.iter().map(|n| count(n)).min().unwrap_or(0);
        most - fewest
    };
    Spread {
        replicas: range(|n| n.replicas),
        leaders: range(|n| n.leaders),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, replicas: u32, leaders: u32, voter: bool, draining: bool) -> pb::NodeStatus {
        pb::NodeStatus {
            id,
            replicas,
            leaders,
            voter,
            draining,
            ..Default::default()
        }
    }

    #[test]
    fn the_spread_counts_only_voters_that_are_not_draining() {
        let status = pb::ClusterStatusResponse {
            nodes: vec![
                node(1, 4, 2, true, false),
                node(2, 2, 1, true, false),
                node(3, 3, 0, true, false),
                // Joining and leaving nodes would make any cluster uneven.
                node(4, 0, 0, false, false),
                node(5, 9, 5, true, true),
            ],
            ..Default::default()
        };
        assert_eq!(
            spread(&status),
            Spread {
                replicas: 2,
                leaders: 2
            }
        );
        assert_eq!(
            spread(&pb::ClusterStatusResponse::default()),
            Spread::default()
        );
    }
}
