//! Webhook ingestion, independent of the wire: source ids and secrets,
//! signature checks, and the event each delivery becomes.
//!
//! The gRPC `Ingest` service (`api/grpc/ingest.rs`) authenticates a delivery
//! with these and appends its event as one `PartitionCommand::Ingest`; the
//! HTTP receivers in `gateway/ingest.rs` map onto that service.

pub mod envelope;
pub mod signature;

use rand::RngCore;

use crate::raft::types::IngestSource;

/// Source secrets are recognisable in logs and secret scanners, and differ
/// from API tokens (`rst_`) so neither is mistaken for the other.
pub const SOURCE_SECRET_PREFIX: &str = "rsi_";
const SOURCE_ID_PREFIX: &str = "src_";
/// The largest delivery body, as on Workato.
pub const MAX_DELIVERY_BYTES: usize = 1024 * 1024;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// One captured delivery holds both a message and its MAC, so a short HMAC
/// secret can be found from it offline by brute force.
pub const HMAC_SECRET_MIN_BYTES: usize = 16;

/// Message headers every ingested event carries; its key is the source id.
pub const HEADER_SOURCE_ID: &str = "source-id";
pub const HEADER_EVENT_ID: &str = "event-id";
pub const HEADER_SOURCE_TYPE: &str = "source-type";

/// A new source id: a prefix and 80 random bits in hex.
pub fn new_source_id() -> String {
    random_id(SOURCE_ID_PREFIX)
}

/// `prefix` and 80 random bits in hex: ids of sources and subscriptions.
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 10];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A new event id in LangWatch's format, `envelope-<unix-ms>-<random8>`:
/// the time the delivery was received, then 8 random hex digits (32 bits)
/// telling apart deliveries of the same millisecond.
pub fn new_event_id(received_ms: i64) -> String {
    let mut bytes = [0u8; 4];
    rand::rng().fill_bytes(&mut bytes);
    format!("{EVENT_ID_PREFIX}{received_ms}-{}", hex::encode(bytes))
}

const EVENT_ID_PREFIX: &str = "envelope-";

pub fn new_source_secret() -> String {
    crate::auth::generate_prefixed_secret(SOURCE_SECRET_PREFIX)
}

/// The last four characters of a secret, which list and get show.
pub fn last_four(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// A source's HMAC secret was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "hmac_secret must have at least {HMAC_SECRET_MIN_BYTES} bytes (it has {len_bytes}); \
     leave it out for unsigned deliveries"
)]
pub struct HmacSecretTooShort {
    pub len_bytes: usize,
}

/// Checks the HMAC secret a source is given, if any. Only new secrets are
/// checked: a source already stored with a shorter one keeps working, and
/// the metadata state machine, which must apply old log entries as it did,
/// does not check this.
pub fn validate_hmac_secret(hmac_secret: Option<&str>) -> Result<(), HmacSecretTooShort> {
    match hmac_secret {
        Some(secret) if secret.len() < HMAC_SECRET_MIN_BYTES => Err(HmacSecretTooShort {
            len_bytes: secret.len(),
        }),
        _ => Ok(()),
    }
}

/// Why a delivery was refused before anything was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryRefused {
    #[error("unknown or rotated source secret")]
    BadSecret,
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
    #[error("the body exceeds {MAX_DELIVERY_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    InvalidBody(String),
    #[error(
        "Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters"
    )]
    InvalidIdempotencyKey,
}

/// Checks what a delivery presents: its secret, then its signature when
/// the source has an HMAC secret, then the shape of its idempotency key.
/// `signature` is `X-Workato-Signature` with `X-Workato-Timestamp` folded
/// in (`signature::fold_timestamp_header`); `now_unix_s` is this node's
/// clock, which the signed timestamp must be near.
pub fn check_delivery(
    source: &IngestSource,
    secret: &str,
    signature: Option<&str>,
    body: &[u8],
    idempotency_key: Option<&str>,
    now_unix_s: i64,
) -> Result<(), DeliveryRefused> {
    if !crate::auth::secret_matches(secret, &source.secret_hash) {
        return Err(DeliveryRefused::BadSecret);
    }
    if let Some(hmac_secret) = &source.hmac_secret {
        signature::verify(hmac_secret.as_bytes(), body, signature, now_unix_s)?;
    }
    if body.len() > MAX_DELIVERY_BYTES {
        return Err(DeliveryRefused::TooLarge);
    }
    if let Some(key) = idempotency_key {
        let printable = key.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS || !printable {
            return Err(DeliveryRefused::InvalidIdempotencyKey);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::raft::types::SourceKind;

    fn source(secret: &str, hmac: Option<&str>) -> IngestSource {
        IngestSource {
            id: new_source_id(),
            name: "s".into(),
            kind: SourceKind::Generic,
            topic_id: crate::model::TopicId(1),
            tenant_id: "default".into(),
            secret_hash: crate::auth::hash_secret(secret),
            secret_last_four: last_four(secret),
            hmac_secret: hmac.map(String::from),
            created_at_ms: 0,
        }
    }

    #[test]
    fn ids_and_secrets_are_prefixed_and_random() {
        let (a, b) = (new_source_id(), new_source_id());
        assert!(a.starts_with("src_") && a.len() == 24 && a != b);
        let secret = new_source_secret();
        // 32 random bytes are 43 base64url characters.
        assert!(secret.starts_with(SOURCE_SECRET_PREFIX));
        assert_eq!(secret.len(), SOURCE_SECRET_PREFIX.len() + 43);
        assert_eq!(last_four(&secret), secret[secret.len() - 4..]);
        assert_eq!(last_four("ab"), "ab");
        let event_id = new_event_id(1_714_557_600_123);
        let random = event_id
            .strip_prefix("envelope-1714557600123-")
            .unwrap_or_else(|| panic!("{event_id}"));
        assert!(
            random.len() == 8 && random.chars().all(|c| c.is_ascii_hexdigit()),
            "{event_id}"
        );
        assert_ne!(new_event_id(0), new_event_id(0));
    }

    #[test]
    fn deliveries_need_the_secret_a_signature_and_a_sane_key() {
        const NOW_S: i64 = 1_712_345_678;
        fn check(
            source: &IngestSource,
            secret: &str,
            signature: Option<&str>,
            body: &[u8],
            key: Option<&str>,
        ) -> Result<(), DeliveryRefused> {
            check_delivery(source, secret, signature, body, key, NOW_S)
        }
        let plain = source("rsi_good", None);
        assert_eq!(check(&plain, "rsi_good", None, b"{}", None), Ok(()));
        assert_eq!(
            check(&plain, "rsi_bad", None, b"{}", None),
            Err(DeliveryRefused::BadSecret)
        );
        let hmac_secret = "whsec-0123456789abcdef";
        let signed = source("rsi_good", Some(hmac_secret));
        assert!(matches!(
            check(&signed, "rsi_good", None, b"{}", None),
            Err(DeliveryRefused::Signature(_))
        ));
        let good = signature::signature_header(hmac_secret.as_bytes(), NOW_S, b"{}");
        assert_eq!(check(&signed, "rsi_good", Some(&good), b"{}", None), Ok(()));
        // The clock the caller passes is the one the timestamp is held to.
        let later_s = NOW_S + signature::TIMESTAMP_TOLERANCE_S as i64 + 1;
        assert_eq!(
            check_delivery(&signed, "rsi_good", Some(&good), b"{}", None, later_s),
            Err(DeliveryRefused::Signature(
                signature::SignatureError::OutsideTolerance
            ))
        );
        assert_eq!(
            check(&plain, "rsi_good", None, b"{}", Some("bad\nkey")),
            Err(DeliveryRefused::InvalidIdempotencyKey)
        );
        assert_eq!(
            check(&plain, "rsi_good", None, b"{}", Some(&"k".repeat(256))),
            Err(DeliveryRefused::InvalidIdempotencyKey)
        );
        let big = vec![b' '; MAX_DELIVERY_BYTES + 1];
        assert_eq!(
            check(&plain, "rsi_good", None, &big, None),
            Err(DeliveryRefused::TooLarge)
        );
    }

    #[test]
    fn hmac_secrets_need_sixteen_bytes() {
        assert_eq!(validate_hmac_secret(None), Ok(()));
        assert_eq!(validate_hmac_secret(Some("0123456789abcdef")), Ok(()));
        assert_eq!(
            validate_hmac_secret(Some("0123456789abcde")),
            Err(HmacSecretTooShort { len_bytes: 15 })
        );
        assert_eq!(
            validate_hmac_secret(Some("")),
            Err(HmacSecretTooShort { len_bytes: 0 })
        );
        // Bytes, not characters: eight two-byte characters are enough.
        assert_eq!(validate_hmac_secret(Some("éééééééé")), Ok(()));
        let refused = HmacSecretTooShort { len_bytes: 6 }.to_string();
        assert!(refused.contains("at least 16 bytes"), "{refused}");
    }
}
