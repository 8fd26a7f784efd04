//! `X-Workato-Signature`: the hex HMAC-SHA256 of the raw body under the
//! source's shared secret, optionally prefixed `sha256=`.

use hmac::Hmac;
use hmac::Mac;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Workato-Signature: this source signs its deliveries")]
    Missing,
    #[error("X-Workato-Signature must be hex HMAC-SHA256, optionally prefixed sha256=")]
    Malformed,
    #[error("X-Workato-Signature does not match the body")]
    Mismatch,
}

/// Verifies `header` against `body`; the comparison is constant-time.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex_digest = header.strip_prefix("sha256=").unwrap_or(header);
    let presented = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    mac(secret, body)
        .ok_or(SignatureError::Mismatch)?
        .verify_slice(&presented)
        .map_err(|_| SignatureError::Mismatch)
}

/// The signature a sender computes, as lowercase hex without a prefix.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    mac(secret, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default()
}

/// HMAC takes keys of every length, so this is always `Some`; the error
/// `new_from_slice` declares exists for other MACs.
fn mac(secret: &[u8], body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(body);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_vector_verifies() {
        // RFC 4231 test case 2.
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(sign(b"Jefe", b"what do ya want for nothing?"), expected);
        let body = b"what do ya want for nothing?";
        assert_eq!(verify(b"Jefe", body, Some(expected)), Ok(()));
        let prefixed = format!("sha256={}", expected.to_uppercase());
        assert_eq!(verify(b"Jefe", body, Some(&prefixed)), Ok(()));
    }

    #[test]
    fn wrong_missing_malformed_and_tampered_signatures_fail() {
        let body = br#"{"event":"job.completed"}"#;
        let good = sign(b"k", body);
        assert_eq!(verify(b"k", body, None), Err(SignatureError::Missing));
        assert_eq!(
            verify(b"k", body, Some("zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"other", body, Some(&good)),
            Err(SignatureError::Mismatch)
        );
        let tampered = br#"{"event":"job.failed"}"#;
        assert_eq!(
            verify(b"k", tampered, Some(&good)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k", body, Some(&good[..10])),
            Err(SignatureError::Mismatch)
        );
    }
}
