//! Whose a data directory is: the node id it was created for, a random
//! incarnation that is new whenever a node starts on an empty directory, and
//! the id of the cluster it belongs to once the cluster has formed.
//!
//! Raft needs every node to keep its own log, term and vote. A directory
//! handed to the wrong node id (a disk moved between machines, a typo in
//! `--node-id`) would make that node speak with another's memory, so the
//! node refuses to start. A node of another cluster (a stale `--peers`
//! entry, two clusters sharing hosts) must not exchange Raft messages with
//! this one, so peers show their cluster id on every call and a mismatch is
//! refused. The incarnation tells peers that a node came back with an
//! empty directory (see `rejoin.rs`).
//!
//! Kept in `identity.json` beside the database, replaced atomically (write,
//! fsync, rename, fsync the directory) so a crash leaves the old or the new.

use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest as _;

use crate::model::NodeId;

const FILE_NAME: &str = "identity.json";

/// Metadata a peer call carries: the sender's cluster id.
pub const CLUSTER_ID_HEADER: &str = "x-raftstream-cluster";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    /// Random; new each time the node starts on an empty data directory.
    pub incarnation: u64,
    /// Known once the metadata group holds the cluster secret.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Started on an empty data directory and not yet caught up in every
    /// group (`rejoin.rs`): a restart meanwhile finds a database, but not
    /// everything this node once acknowledged, so it stays cautious.
    #[serde(default)]
    pub rejoining: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the data directory {dir} belongs to node {found}, not to node {configured}: \
         check --node-id and --data-dir"
    )]
    WrongNode {
        dir: PathBuf,
        found: NodeId,
        configured: NodeId,
    },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cluster id: a digest of the cluster secret, so it names the cluster
/// without revealing the secret.
pub fn cluster_id(secret: &[u8; 32]) -> String {
    let digest = sha2::Sha256::new()
        .chain_update(b"raftstream cluster id\0")
        .chain_update(secret)
        .finalize();
    hex::encode(&digest[..16])
}

impl Identity {
    /// Reads the identity of `data_dir`, or writes a new one. `empty`: the
    /// node found no database, so this is a new incarnation, of no cluster
    /// until it learns one: with no data it can harm none, and a cluster
    /// recreated from empty databases gets a new id.
    pub fn load_or_create(
        data_dir: &Path,
        node_id: NodeId,
        empty: bool,
    ) -> Result<Identity, IdentityError> {
        let path = data_dir.join(FILE_NAME);
        let found = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<Identity>(&bytes).map_err(|e| {
                IdentityError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(IdentityError::Unreadable {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        if let Some(found) = &found
            && found.node_id != node_id
        {
            return Err(IdentityError::WrongNode {
                dir: data_dir.to_path_buf(),
                found: found.node_id,
                configured: node_id,
            });
        }
        match found {
            Some(found) if !empty => Ok(found),
            // A directory from before identities existed is taken as the
            // configured node's.
            _ => {
                let identity = Identity {
                    node_id,
                    incarnation: rand::random::<u64>().max(1),
                    cluster_id: None,
                    rejoining: empty,
                };
                identity.store(data_dir)?;
                Ok(identity)
            }
        }
    }

    /// Writes this identity to `data_dir`, replacing the old one atomically.
    pub fn store(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = data_dir.join(FILE_NAME);
        let staged = data_dir.join(format!("{FILE_NAME}.new"));
        let write_error = |source| IdentityError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(write_error)?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| write_error(e.into()))?;
        let mut file = std::fs::File::create(&staged).map_err(write_error)?;
        file.write_all(&bytes).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        std::fs::rename(&staged, &path).map_err(write_error)?;
        std::fs::File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write_error)
    }
}

/// Whether a peer that shows `theirs` may talk to a node of `ours`: a node
/// that does not know its cluster yet (new, or not yet caught up) may.
pub fn same_cluster(ours: Option<&str>, theirs: Option<&str>) -> bool {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => ours == theirs,
        _ => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_identity_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path(), NodeId(3), true).unwrap();
        let again = Identity::load_or_create(dir.path(), NodeId(3), false).unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn a_directory_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), NodeId(3), true).unwrap();
        let refused = Identity::load_or_create(dir.path(), NodeId(2), false).unwrap_err();
        assert!(
            matches!(
                refused,
                IdentityError::WrongNode {
                    found: NodeId(3),
                    configured: NodeId(2),
                    ..
                }
            ),
            "{refused}"
        );
        // Even once its database is gone: the id is of the directory.
        assert!(Identity::load_or_create(dir.path(), NodeId(2), true).is_err());
    }

    #[test]
    fn an_empty_start_is_a_new_incarnation_of_no_cluster_yet() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Identity::load_or_create(dir.path(), NodeId(1), true).unwrap();
        first.cluster_id = Some(cluster_id(&[7; 32]));
        first.store(dir.path()).unwrap();
        assert_eq!(
            Identity::load_or_create(dir.path(), NodeId(1), false).unwrap(),
            first
        );
        let wiped = Identity::load_or_create(dir.path(), NodeId(1), true).unwrap();
        assert_ne!(wiped.incarnation, first.incarnation);
        assert_eq!(wiped.cluster_id, None);
        assert!(wiped.rejoining);
        // A restart before it caught up finds it still rejoining.
        assert!(
            Identity::load_or_create(dir.path(), NodeId(1), false)
                .unwrap()
                .rejoining
        );
    }

    #[test]
    fn a_garbled_identity_is_an_error_not_a_new_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path(), NodeId(1), false),
            Err(IdentityError::Unreadable { .. })
        ));
    }

    #[test]
    fn cluster_ids_differ_by_secret_and_only_known_ids_can_clash() {
        let a = cluster_id(&[1; 32]);
        let b = cluster_id(&[2; 32]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same_cluster(Some(&a), Some(&a)));
        assert!(!same_cluster(Some(&a), Some(&b)));
        assert!(same_cluster(None, Some(&b)));
        assert!(same_cluster(Some(&a), None));
    }
}
