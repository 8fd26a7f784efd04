//! Webhook signatures. A signed delivery names the Unix time it was signed
//! at, and its signature is the HMAC-SHA256, under the source's shared
//! secret, of `"{timestamp}.{raw body}"`, as Stripe and Slack sign theirs.
//! The timestamp is signed and must be recent, so a captured delivery
//! cannot be replayed once the tolerance has passed. A sender writes either
//!
//! - `X-Workato-Signature: t=<unix seconds>,v1=<hex>` (Stripe's form), or
//! - `X-Workato-Timestamp: <unix seconds>` and `X-Workato-Signature: <hex>`
//!   (a `sha256=` prefix is accepted).
//!
//! The gRPC `DeliverRequest` has one field for both headers, and a
//! delivery forwarded to its partition's leader must keep its timestamp, so
//! the HTTP gateway folds `X-Workato-Timestamp` into the signature in
//! Stripe's form (`fold_timestamp_header`) and `verify` reads that form.

use hmac::Hmac;
use hmac::Mac;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a delivery's timestamp may be from this node's clock, either
/// way: behind, for a sender's retries and queues, and ahead, for a sender
/// whose clock runs fast. A captured delivery replays only within it.
pub const TIMESTAMP_TOLERANCE_S: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Workato-Signature: this source signs its deliveries")]
    Missing,
    #[error(
        "missing X-Workato-Timestamp: a signed delivery carries the Unix time it was signed at, \
         in X-Workato-Timestamp or as t= in X-Workato-Signature"
    )]
    MissingTimestamp,
    #[error("X-Workato-Timestamp (or t= in X-Workato-Signature) must be Unix seconds")]
    MalformedTimestamp,
    #[error("X-Workato-Timestamp and t= in X-Workato-Signature disagree")]
    ConflictingTimestamps,
    #[error(
        "X-Workato-Signature must be t=<unix seconds>,v1=<hex HMAC-SHA256>, or the hex \
         HMAC-SHA256 (optionally prefixed sha256=) with X-Workato-Timestamp"
    )]
    Malformed,
    #[error("X-Workato-Signature does not match the timestamp and body")]
    Mismatch,
    #[error(
        "X-Workato-Timestamp is outside the {TIMESTAMP_TOLERANCE_S} s tolerance; \
         the delivery may be a replay"
    )]
    OutsideTolerance,
}

/// The one signature value `verify` reads: `signature` as it is, or, when
/// `X-Workato-Timestamp` came too, both in Stripe's form. Nothing is
/// checked here; `verify` reports what is wrong.
pub fn fold_timestamp_header(signature: Option<&str>, timestamp: Option<&str>) -> Option<String> {
    let signature = signature?.trim();
    let Some(timestamp) = timestamp else {
        return Some(signature.to_string());
    };
    // Anything but digits would add elements of its own to the folded
    // value; `verify` refuses this placeholder as a malformed timestamp.
    let timestamp = match timestamp.trim() {
        digits if is_unix_seconds(digits) => digits,
        _ => "malformed",
    };
    if is_stripe_form(signature) {
        // Two timestamps: `verify` takes them only when they agree.
        Some(format!("{signature},t={timestamp}"))
    } else {
        let hex_digest = signature.strip_prefix("sha256=").unwrap_or(signature);
        Some(format!("t={timestamp},v1={hex_digest}"))
    }
}

/// Verifies a (folded) signature against `body` at `now_unix_s`, this
/// node's clock. The comparison is constant-time.
pub fn verify(
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
    now_unix_s: i64,
) -> Result<(), SignatureError> {
    let signed = parse(signature.ok_or(SignatureError::Missing)?.trim())?;
    mac(secret, signed.timestamp, body)
        .ok_or(SignatureError::Mismatch)?
        .verify_slice(&signed.digest)
        .map_err(|_| SignatureError::Mismatch)?;
    // Checked after the signature, so that only an authentic delivery is
    // called a possible replay.
    if now_unix_s.abs_diff(signed.timestamp_s) > TIMESTAMP_TOLERANCE_S {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(())
}

/// The signature a sender computes, as lowercase hex without a prefix.
pub fn sign(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    mac(secret, &timestamp_s.to_string(), body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default()
}

/// The whole `X-Workato-Signature` a sender writes, in Stripe's form.
pub fn signature_header(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    format!("t={timestamp_s},v1={}", sign(secret, timestamp_s, body))
}

/// A signature in Stripe's form, taken apart.
struct Signed<'a> {
    /// As sent: the signed message holds these very characters.
    timestamp: &'a str,
    timestamp_s: i64,
    digest: Vec<u8>,
}

fn parse(signature: &str) -> Result<Signed<'_>, SignatureError> {
    if !is_stripe_form(signature) {
        // A bare or `sha256=` signature names no time, and
        // `X-Workato-Timestamp` would have been folded into it.
        let hex_digest = signature.strip_prefix("sha256=").unwrap_or(signature);
        return Err(match hex::decode(hex_digest) {
            Ok(_) => SignatureError::MissingTimestamp,
            Err(_) => SignatureError::Malformed,
        });
    }
    let mut timestamp = None;
    let mut digest = None;
    for element in signature.split(',') {
        let (key, value) = element
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" if timestamp.is_some_and(|t| t != value) => {
                return Err(SignatureError::ConflictingTimestamps);
            }
            "t" => timestamp = Some(value),
            "v1" if digest.is_some() => return Err(SignatureError::Malformed),
            "v1" => digest = Some(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            // Other schemes (Stripe's test-mode `v0`, a future `v2`) are
            // skipped, as Stripe does, so a sender can add one before we
            // check it.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?;
    let digest = digest.ok_or(SignatureError::Malformed)?;
    let timestamp_s = Some(timestamp)
        .filter(|t| is_unix_seconds(t))
        .and_then(|t| t.parse().ok())
        .ok_or(SignatureError::MalformedTimestamp)?;
    Ok(Signed {
        timestamp,
        timestamp_s,
        digest,
    })
}

fn is_stripe_form(signature: &str) -> bool {
    signature.split(',').any(|element| {
        let element = element.trim_start();
        element.starts_with("t=") || element.starts_with("v1=")
    })
}

/// Plain digits only: `str::parse` would also take a sign.
fn is_unix_seconds(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// HMAC takes keys of every length, so this is always `Some`; the error
/// `new_from_slice` declares exists for other MACs.
fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-0123456789abcdef";
    const BODY: &[u8] = br#"{"event":"job.completed"}"#;
    const NOW_S: i64 = 1_712_345_678;

    /// What the gateway hands the verifier for these two headers.
    fn check(signature: Option<&str>, timestamp: Option<&str>) -> Result<(), SignatureError> {
        let folded = fold_timestamp_header(signature, timestamp);
        verify(SECRET, BODY, folded.as_deref(), NOW_S)
    }

    #[test]
    fn signs_the_timestamp_a_dot_and_the_body() {
        // HMAC-SHA256 of "1712345678.{body}" under SECRET, from
        // `printf '%s' '1712345678.{"event":"job.completed"}' |
        //  openssl dgst -sha256 -hmac whsec-0123456789abcdef`.
        let expected = "b856d89618a23dd0f7cb713062733c8a08187f99942d43e1909d2b26a7d66793";
        assert_eq!(sign(SECRET, NOW_S, BODY), expected);
        assert_eq!(
            signature_header(SECRET, NOW_S, BODY),
            format!("t={NOW_S},v1={expected}")
        );
    }

    #[test]
    fn a_signature_with_the_timestamp_header_verifies() {
        let digest = sign(SECRET, NOW_S, BODY);
        let timestamp = NOW_S.to_string();
        assert_eq!(check(Some(&digest), Some(&timestamp)), Ok(()));
        let prefixed = format!("sha256={}", digest.to_uppercase());
        assert_eq!(check(Some(&prefixed), Some(&timestamp)), Ok(()));
    }

    #[test]
    fn a_stripe_form_signature_verifies() {
        let header = signature_header(SECRET, NOW_S, BODY);
        assert_eq!(check(Some(&header), None), Ok(()));
        let reordered = format!("v0=ignored, v1={}, t={NOW_S}", sign(SECRET, NOW_S, BODY));
        assert_eq!(check(Some(&reordered), None), Ok(()));
        // The same time in both places is no conflict.
        assert_eq!(check(Some(&header), Some(&NOW_S.to_string())), Ok(()));
    }

    #[test]
    fn a_timestamp_older_than_the_tolerance_is_refused() {
        let tolerance_s = TIMESTAMP_TOLERANCE_S as i64;
        let edge = NOW_S - tolerance_s;
        assert_eq!(
            check(Some(&signature_header(SECRET, edge, BODY)), None),
            Ok(())
        );
        let old = edge - 1;
        let replayed = signature_header(SECRET, old, BODY);
        assert_eq!(
            check(Some(&replayed), None),
            Err(SignatureError::OutsideTolerance)
        );
        let digest = sign(SECRET, old, BODY);
        assert_eq!(
            check(Some(&digest), Some(&old.to_string())),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            SignatureError::OutsideTolerance.to_string(),
            "X-Workato-Timestamp is outside the 300 s tolerance; the delivery may be a replay"
        );
    }

    #[test]
    fn a_timestamp_too_far_in_the_future_is_refused() {
        let tolerance_s = TIMESTAMP_TOLERANCE_S as i64;
        let edge = NOW_S + tolerance_s;
        assert_eq!(
            check(Some(&signature_header(SECRET, edge, BODY)), None),
            Ok(())
        );
        let ahead = signature_header(SECRET, edge + 1, BODY);
        assert_eq!(
            check(Some(&ahead), None),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn a_signature_without_a_timestamp_is_refused() {
        let digest = sign(SECRET, NOW_S, BODY);
        assert_eq!(
            check(Some(&digest), None),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            check(Some(&format!("sha256={digest}")), None),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            check(Some(&format!("v1={digest}")), None),
            Err(SignatureError::MissingTimestamp)
        );
        assert!(
            SignatureError::MissingTimestamp
                .to_string()
                .contains("X-Workato-Timestamp")
        );
        // A timestamp alone signs nothing.
        assert_eq!(
            check(None, Some(&NOW_S.to_string())),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let header = signature_header(SECRET, NOW_S, BODY);
        let tampered = br#"{"event":"job.failed"}"#;
        let folded = fold_timestamp_header(Some(&header), None);
        assert_eq!(
            verify(SECRET, tampered, folded.as_deref(), NOW_S),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another secret", BODY, folded.as_deref(), NOW_S),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_tampered_timestamp_is_refused() {
        // Signed a while ago; the replayer moves the time into the tolerance.
        let digest = sign(SECRET, NOW_S - 3_600, BODY);
        let fresh = NOW_S.to_string();
        assert_eq!(
            check(Some(&digest), Some(&fresh)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(Some(&format!("t={NOW_S},v1={digest}")), None),
            Err(SignatureError::Mismatch)
        );
        // The same instant written differently is another signed message.
        let padded = format!("t=0{NOW_S},v1={}", sign(SECRET, NOW_S, BODY));
        assert_eq!(check(Some(&padded), None), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_and_conflicting_headers_are_refused() {
        let digest = sign(SECRET, NOW_S, BODY);
        let header = signature_header(SECRET, NOW_S, BODY);
        let cases = [
            (Some("zz"), None, SignatureError::Malformed),
            (Some("zz"), Some("1712345678"), SignatureError::Malformed),
            (
                Some(header.as_str()),
                Some("1712345679"),
                SignatureError::ConflictingTimestamps,
            ),
            (
                Some(digest.as_str()),
                Some("-1712345678"),
                SignatureError::MalformedTimestamp,
            ),
            (
                Some(digest.as_str()),
                Some("1712345678,v1=00"),
                SignatureError::MalformedTimestamp,
            ),
            (
                Some("t=yesterday,v1=00"),
                None,
                SignatureError::MalformedTimestamp,
            ),
            (Some("t=1712345678"), None, SignatureError::Malformed),
            (
                Some("t=1712345678,sha256=00"),
                None,
                SignatureError::Malformed,
            ),
            (
                Some("t=1712345678,v1=00,v1=01"),
                None,
                SignatureError::Malformed,
            ),
            (None, None, SignatureError::Missing),
        ];
        for (signature, timestamp, expected) in cases {
            assert_eq!(
                check(signature, timestamp),
                Err(expected),
                "{signature:?} {timestamp:?}"
            );
        }
        let short = format!("t={NOW_S},v1={}", &digest[..10]);
        assert_eq!(check(Some(&short), None), Err(SignatureError::Mismatch));
    }
}
