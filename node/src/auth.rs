//! API tokens: secrets are generated here, stored only as SHA-256 hashes in
//! the replicated metadata, and checked in constant time. A token limited
//! to topics keeps their ids, and reads that stay open re-check their token.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::Digest;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::group::HostedGroups;
use crate::model::TopicId;
use crate::model::TopicName;
use crate::raft::types::MetaRejection;
use crate::raft::types::MetaState;
use crate::raft::types::Scope;
use crate::raft::types::TokenRecord;
use crate::raft::types::TokenTopic;
use crate::raft::types::Topic;

/// Recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "rst_";
const SECRET_BYTES: usize = 32;

pub fn generate_secret() -> String {
    generate_prefixed_secret(TOKEN_PREFIX)
}

/// `prefix` followed by 32 random bytes, base64url without padding.
pub fn generate_prefixed_secret(prefix: &str) -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `secret` hashes to `hash`, compared in constant time.
pub fn secret_matches(secret: &str, hash: &[u8; 32]) -> bool {
    bool::from(hash_secret(secret).ct_eq(hash))
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token a secret belongs to. Every stored hash is compared, each in
/// constant time, so timing reveals neither which token matched nor how
/// much of a hash did.
pub fn authenticate<'m>(meta: &'m MetaState, secret: &str) -> Option<&'m TokenRecord> {
    let hash = hash_secret(secret);
    let mut found = None;
    for token in meta.tokens.values() {
        if bool::from(token.hash.ct_eq(&hash)) {
            found = Some(token);
        }
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Scope(Scope),
    Topic,
}

impl TokenRecord {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// Whether this token may use `scope` on `topic`, which it names by id
    /// (or, until resolved, by a legacy name).
    pub fn allows(&self, scope: Scope, topic: Option<&Topic>) -> Result<(), Denied> {
        if !self.has_scope(scope) {
            return Err(Denied::Scope(scope));
        }
        if self.topics.is_empty() {
            return Ok(());
        }
        match topic {
            Some(t) if self.topics.iter().any(|allowed| allowed.is(t)) => Ok(()),
            _ => Err(Denied::Topic),
        }
    }

    /// The token's topics as people name them: each topic's current name,
    /// or the id of a topic that no longer exists.
    pub fn topic_names(&self, meta: &MetaState) -> Vec<String> {
        self.topics
            .iter()
            .map(|topic| match topic {
                TokenTopic::Id(id) => meta
                    .topics
                    .get(id)
                    .map_or_else(|| id.to_string(), |t| t.name.clone()),
                TokenTopic::LegacyName(name) => name.clone(),
            })
            .collect()
    }
}

impl TokenTopic {
    pub fn is(&self, topic: &Topic) -> bool {
        match self {
            TokenTopic::Id(id) => *id == topic.id,
            TokenTopic::LegacyName(name) => *name == topic.name,
        }
    }
}

/// The ids of the topics a new token is limited to, given by name or id,
/// in order and without repeats; a topic that does not exist refuses the
/// whole token. The token keeps the ids, so a rename neither takes a topic
/// away from it nor gives it the topic that takes the old name.
pub fn resolve_token_topics(
    meta: &MetaState,
    requested: &[String],
) -> Result<Vec<TopicId>, MetaRejection> {
    let mut ids: Vec<TopicId> = Vec::with_capacity(requested.len());
    for text in requested {
        let id = match TopicName::parse(text) {
            TopicName::Id(id) if meta.topics.contains_key(&id) => id,
            TopicName::Id(topic_id) => return Err(MetaRejection::TopicNotFound { topic_id }),
            TopicName::Name(name) => match meta.topic_by_name(&name) {
                Some(topic) => topic.id,
                None => return Err(MetaRejection::TopicNameNotFound { name }),
            },
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Why a caller admitted to a read that stays open (a stream, a long poll)
/// may not read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessLost {
    #[error("token revoked")]
    Revoked,
    #[error("the token no longer allows this read")]
    Denied(Denied),
    /// The metadata group is gone: the node is stopping.
    #[error("this node is shutting down; retry another")]
    NodeStopping,
}

/// Whether token `token_id` may still use `scope` on topic `topic_id`
/// (`None`: a topic this node has not resolved; then only the token and
/// its scope are checked), by this metadata.
pub fn still_allowed(
    meta: &MetaState,
    token_id: u64,
    scope: Scope,
    topic_id: Option<TopicId>,
) -> Result<&TokenRecord, AccessLost> {
    let token = meta.tokens.get(&token_id).ok_or(AccessLost::Revoked)?;
    match topic_id {
        Some(id) => token.allows(scope, meta.topics.get(&id)),
        None if token.has_scope(scope) => Ok(()),
        None => Err(Denied::Scope(scope)),
    }
    .map_err(AccessLost::Denied)?;
    Ok(token)
}

/// A backstop to the metadata watch below: reads that stay open check
/// their token at least this often.
pub const ACCESS_RECHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Resolves once token `token_id` may no longer use `scope` on `topic_id`
/// by this node's metadata, checked whenever the metadata changes and at
/// least every [`ACCESS_RECHECK_INTERVAL`]. Reads that stay open race
/// against it, so revoking a token ends them within a second rather than
/// when they would have ended anyway. Only memory is read, never storage.
pub async fn access_lost(
    groups: &HostedGroups,
    token_id: u64,
    scope: Scope,
    topic_id: Option<TopicId>,
) -> AccessLost {
    let Some(meta) = groups.meta() else {
        return AccessLost::NodeStopping;
    };
    let mut changes = meta.state.subscribe();
    let mut recheck = tokio::time::interval(ACCESS_RECHECK_INTERVAL);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        changes.borrow_and_update();
        let verdict = groups.with_metadata(|m| {
            still_allowed(m, token_id, scope, topic_id)
                .map(|_| ())
                .err()
        });
        match verdict {
            Some(None) => {}
            Some(Some(lost)) => return lost,
            None => return AccessLost::NodeStopping,
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return AccessLost::NodeStopping;
                }
            }
            _ = recheck.tick() => {}
        }
    }
}

/// The credentials of `Authorization: Bearer <credentials>`. The scheme is
/// matched without regard to case, as RFC 9110 says auth schemes are.
pub fn bearer_credentials(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.trim_start().split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::raft::types::RetentionPolicy;

    fn token(id: u64, secret: &str, scopes: Vec<Scope>, topics: Vec<TokenTopic>) -> TokenRecord {
        TokenRecord {
            id,
            name: format!("t{id}"),
            scopes,
            topics,
            hash: hash_secret(secret),
            created_at_ms: 0,
        }
    }

    fn topic(id: u64, name: &str) -> Topic {
        Topic {
            id: TopicId(id),
            name: name.into(),
            description: String::new(),
            schema: None,
            replication_factor: 1,
            retention: RetentionPolicy {
                retention_ms: None,
                retention_bytes: None,
            },
            partitions: vec![vec![crate::model::NodeId(1)]],
            created_at_ms: 0,
            updated_at_ms: 0,
            version: 1,
        }
    }

    fn meta_with(topics: &[(u64, &str)]) -> MetaState {
        let mut meta = MetaState::default();
        for (id, name) in topics {
            meta.topics.insert(TopicId(*id), topic(*id, name));
        }
        meta.next_topic_id = TopicId(topics.iter().map(|(id, _)| id + 1).max().unwrap_or(1));
        meta
    }

    #[test]
    fn the_bearer_scheme_matches_in_any_case() {
        for header in [
            "Bearer rst_x",
            "bearer rst_x",
            "BEARER rst_x",
            "  bEaReR  rst_x ",
        ] {
            assert_eq!(bearer_credentials(header), Some("rst_x"), "{header:?}");
        }
        for header in [
            "",
            "Bearer",
            "Bearer ",
            "Bearerrst_x",
            "Basic rst_x",
            "Token rst_x",
        ] {
            assert_eq!(bearer_credentials(header), None, "{header:?}");
        }
    }

    #[test]
    fn secrets_are_prefixed_random_and_authenticate_only_their_token() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() >= TOKEN_PREFIX.len() + 43);
        assert_ne!(a, b);
        let mut meta = MetaState::default();
        meta.tokens
            .insert(1, token(1, &a, vec![Scope::Publish], vec![]));
        meta.tokens
            .insert(2, token(2, &b, vec![Scope::Consume], vec![]));
        assert_eq!(authenticate(&meta, &a).unwrap().id, 1);
        assert_eq!(authenticate(&meta, &b).unwrap().id, 2);
        assert!(authenticate(&meta, "rst_wrong").is_none());
        assert!(authenticate(&meta, "").is_none());
    }

    #[test]
    fn scopes_and_topic_lists_are_enforced() {
        let orders = topic(4, "orders");
        let publisher = token(
            1,
            "s",
            vec![Scope::Publish],
            vec![TokenTopic::Id(TopicId(4))],
        );
        assert_eq!(publisher.allows(Scope::Publish, Some(&orders)), Ok(()));
        assert_eq!(
            publisher.allows(Scope::Consume, Some(&orders)),
            Err(Denied::Scope(Scope::Consume))
        );
        let elsewhere = token(3, "s", vec![Scope::Admin], vec![TokenTopic::Id(TopicId(9))]);
        assert_eq!(
            elsewhere.allows(Scope::Publish, Some(&orders)),
            Err(Denied::Topic)
        );
        assert_eq!(elsewhere.allows(Scope::Publish, None), Err(Denied::Topic));
        let admin = token(4, "s", vec![Scope::Admin], vec![]);
        assert_eq!(admin.allows(Scope::Consume, None), Ok(()));
    }

    #[test]
    fn token_topics_resolve_to_ids_by_name_or_id_without_repeats() {
        let meta = meta_with(&[(3, "orders"), (4, "payments")]);
        let check = |requested: &[&str]| {
            let requested: Vec<String> = requested.iter().map(|t| t.to_string()).collect();
            resolve_token_topics(&meta, &requested)
        };
        assert_eq!(check(&[]), Ok(vec![]));
        assert_eq!(check(&["payments", "3"]), Ok(vec![TopicId(4), TopicId(3)]));
        assert_eq!(check(&["orders", "3", "orders"]), Ok(vec![TopicId(3)]));
        assert_eq!(
            check(&["orders", "refunds"]),
            Err(MetaRejection::TopicNameNotFound {
                name: "refunds".into()
            })
        );
        assert_eq!(
            check(&["9"]),
            Err(MetaRejection::TopicNotFound {
                topic_id: TopicId(9)
            })
        );
        assert_eq!(
            check(&[""]),
            Err(MetaRejection::TopicNameNotFound { name: "".into() })
        );
    }

    #[test]
    fn a_renamed_topic_stays_allowed_and_a_new_topic_with_its_old_name_does_not() {
        let reader = token(
            1,
            "s",
            vec![Scope::Consume],
            vec![TokenTopic::Id(TopicId(3))],
        );
        let renamed = topic(3, "b");
        let new_with_old_name = topic(4, "a");
        assert_eq!(reader.allows(Scope::Consume, Some(&renamed)), Ok(()));
        assert_eq!(
            reader.allows(Scope::Consume, Some(&new_with_old_name)),
            Err(Denied::Topic)
        );
        // A name stored before tokens kept ids means the topic bearing it
        // now, as it always did, until the leader resolves it to an id.
        let legacy = token(
            2,
            "s",
            vec![Scope::Consume],
            vec![TokenTopic::LegacyName("a".into())],
        );
        assert_eq!(
            legacy.allows(Scope::Consume, Some(&new_with_old_name)),
            Ok(())
        );
        assert_eq!(
            legacy.allows(Scope::Consume, Some(&renamed)),
            Err(Denied::Topic)
        );
    }

    #[test]
    fn token_topics_are_shown_by_their_current_names() {
        let meta = meta_with(&[(3, "renamed")]);
        let limited = token(
            1,
            "s",
            vec![Scope::Consume],
            vec![
                TokenTopic::Id(TopicId(3)),
                TokenTopic::Id(TopicId(8)),
                TokenTopic::LegacyName("old".into()),
            ],
        );
        assert_eq!(limited.topic_names(&meta), vec!["renamed", "8", "old"]);
    }

    #[test]
    fn open_reads_lose_access_when_the_token_is_revoked_or_no_longer_allows_them() {
        let mut meta = meta_with(&[(3, "orders"), (4, "payments")]);
        meta.tokens.insert(
            1,
            token(
                1,
                "s",
                vec![Scope::Consume],
                vec![TokenTopic::Id(TopicId(3))],
            ),
        );
        assert_eq!(
            still_allowed(&meta, 1, Scope::Consume, Some(TopicId(3)))
                .unwrap()
                .id,
            1
        );
        assert_eq!(
            still_allowed(&meta, 1, Scope::Consume, Some(TopicId(4))).unwrap_err(),
            AccessLost::Denied(Denied::Topic)
        );
        assert_eq!(
            still_allowed(&meta, 1, Scope::Publish, Some(TopicId(3))).unwrap_err(),
            AccessLost::Denied(Denied::Scope(Scope::Publish))
        );
        // A topic this node has not resolved: the token and scope still count.
        assert!(still_allowed(&meta, 1, Scope::Consume, None).is_ok());
        assert_eq!(
            still_allowed(&meta, 1, Scope::Publish, None).unwrap_err(),
            AccessLost::Denied(Denied::Scope(Scope::Publish))
        );
        // A deleted topic is no longer one the token may read.
        meta.topics.remove(&TopicId(3));
        assert_eq!(
            still_allowed(&meta, 1, Scope::Consume, Some(TopicId(3))).unwrap_err(),
            AccessLost::Denied(Denied::Topic)
        );
        meta.tokens.remove(&1);
        assert_eq!(
            still_allowed(&meta, 1, Scope::Consume, None).unwrap_err(),
            AccessLost::Revoked
        );
    }
}
