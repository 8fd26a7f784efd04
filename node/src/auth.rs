//! API tokens: secrets are generated here, stored only as SHA-256 hashes in
//! the replicated metadata, and checked in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::Digest;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::raft::types::MetaState;
use crate::raft::types::Scope;
use crate::raft::types::TokenRecord;
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

    /// Whether this token may use `scope` on `topic` (by its name or id).
    pub fn allows(&self, scope: Scope, topic: Option<&Topic>) -> Result<(), Denied> {
        if !self.has_scope(scope) {
            return Err(Denied::Scope(scope));
        }
        if self.topics.is_empty() {
            return Ok(());
        }
        match topic {
            Some(t)
                if self
                    .topics
                    .iter()
                    .any(|allowed| *allowed == t.name || *allowed == t.id.to_string()) =>
            {
                Ok(())
            }
            _ => Err(Denied::Topic),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token(id: u64, secret: &str, scopes: Vec<Scope>, topics: Vec<&str>) -> TokenRecord {
        TokenRecord {
            id,
            name: format!("t{id}"),
            scopes,
            topics: topics.into_iter().map(String::from).collect(),
            hash: hash_secret(secret),
            created_at_ms: 0,
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
        let topic = Topic {
            id: 4,
            name: "orders".into(),
            description: String::new(),
            schema: None,
            replication_factor: 1,
            retention: crate::raft::types::RetentionPolicy {
                retention_ms: None,
                retention_bytes: None,
            },
            partitions: vec![vec![1]],
            created_at_ms: 0,
            updated_at_ms: 0,
            version: 1,
        };
        let publisher = token(1, "s", vec![Scope::Publish], vec!["orders"]);
        assert_eq!(publisher.allows(Scope::Publish, Some(&topic)), Ok(()));
        assert_eq!(
            publisher.allows(Scope::Consume, Some(&topic)),
            Err(Denied::Scope(Scope::Consume))
        );
        let by_id = token(2, "s", vec![Scope::Consume], vec!["4"]);
        assert_eq!(by_id.allows(Scope::Consume, Some(&topic)), Ok(()));
        let elsewhere = token(3, "s", vec![Scope::Admin], vec!["payments"]);
        assert_eq!(
            elsewhere.allows(Scope::Publish, Some(&topic)),
            Err(Denied::Topic)
        );
        assert_eq!(elsewhere.allows(Scope::Publish, None), Err(Denied::Topic));
        let admin = token(4, "s", vec![Scope::Admin], vec![]);
        assert_eq!(admin.allows(Scope::Consume, None), Ok(()));
    }
}
