//! The Standard Webhooks headers of one outbound attempt.
//!
//! Owns what a receiver sees of eventsd's signature: `webhook-id` (the event id, so receivers
//! deduplicate repeats), `webhook-timestamp` (the attempt's time in unix seconds) and
//! `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per active secret,
//! space-separated, so during a rotation overlap both the new and the old secret sign). It
//! reuses the inbound verifier's signer, so both directions speak exactly the same scheme, and
//! promises that no secret appears in an error.

use crate::error::Error;
use crate::ingest::webhook::signature::{self, Provider};

/// Builds the three headers for `body`, signed with every secret in `secrets` (newest first).
pub fn headers(
    secrets: &[&str],
    event_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, Error> {
    if secrets.is_empty() {
        return Err(Error::Internal("an endpoint has no signing secret".to_owned()));
    }
    let mut signatures = Vec::with_capacity(secrets.len());
    let mut id_and_time = None;
    for (index, secret) in secrets.iter().enumerate() {
        let signed =
            signature::sign(Provider::StandardWebhooks, secret, Some(event_id), timestamp, body)
                .map_err(|error| {
                    Error::Internal(format!("signing with secret #{}: {error}", index + 1))
                })?;
        let mut id = None;
        let mut time = None;
        for (name, value) in signed {
            match name.as_str() {
                "webhook-id" => id = Some(value),
                "webhook-timestamp" => time = Some(value),
                "webhook-signature" => signatures.push(value),
                _ => {}
            }
        }
        if id_and_time.is_none() {
            id_and_time = id.zip(time);
        }
    }
    let (id, time) = id_and_time.ok_or_else(|| {
        Error::Internal("the signer returned no webhook-id or timestamp".to_owned())
    })?;
    Ok(vec![
        ("webhook-id", id),
        ("webhook-timestamp", time),
        ("webhook-signature", signatures.join(" ")),
    ])
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::*;

    /// An independent Standard Webhooks signature, computed from the specification directly.
    fn expected(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
        let key = BASE64.decode(secret.trim_start_matches("whsec_")).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    #[test]
    fn one_secret_signs_per_the_specification() {
        let body = br#"{"id":"evt_1"}"#;
        let headers = headers(&[NEW], "evt_1", 1_700_000_000, body).unwrap();
        assert_eq!(headers[0], ("webhook-id", "evt_1".to_owned()));
        assert_eq!(headers[1], ("webhook-timestamp", "1700000000".to_owned()));
        assert_eq!(headers[2], ("webhook-signature", expected(NEW, "evt_1", 1_700_000_000, body)));
    }

    #[test]
    fn rotation_overlap_sends_both_signatures() {
        let body = b"{}";
        let headers = headers(&[NEW, OLD], "evt_2", 42, body).unwrap();
        let sigs: Vec<&str> = headers[2].1.split(' ').collect();
        assert_eq!(sigs, [expected(NEW, "evt_2", 42, body), expected(OLD, "evt_2", 42, body)]);
    }

    #[test]
    fn errors_never_show_the_secret() {
        let error = headers(&["whsec_!!not base64!!"], "evt_3", 1, b"").unwrap_err().to_string();
        assert!(!error.contains("not base64!!"), "{error}");
        assert!(headers(&[], "evt_3", 1, b"").is_err());
    }
}
