//! HS256 JSON Web Tokens (RFC 7519 with an HMAC-SHA256 signature, RFC 7515), as the
//! `jwt-auth` plugin checks them: header `{"alg":"HS256","typ":"JWT"}`, base64url without
//! padding.

use base64::Engine as _;
use hmac::{KeyInit, Mac};

const HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

/// A token carrying `claims`, signed with `secret`.
pub fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    hs256_payload(secret.as_bytes(), claims.to_string().as_bytes())
}

/// A token whose payload is exactly `payload` (serialized JSON), signed with `secret`.
pub fn hs256_payload(secret: &[u8], payload: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!("{}.{}", b64.encode(HEADER), b64.encode(payload));
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(signing_input.as_bytes());
    let signature = b64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example token that jwt.io shows, signed with its example secret.
    #[test]
    fn signs_the_known_example() {
        let token = hs256_payload(
            b"your-256-bit-secret",
            br#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#,
        );
        assert_eq!(
            token,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
             SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }

    #[test]
    fn claims_are_compact_json() {
        let claims = serde_json::json!({"sub": "u1", "exp": 2});
        assert_eq!(
            hs256("s", &claims),
            hs256_payload(b"s", claims.to_string().as_bytes())
        );
        let payload = hs256("s", &claims).split('.').nth(1).unwrap().to_string();
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        assert!(!decoded.contains(&b' '));
    }
}
