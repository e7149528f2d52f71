//! HS256 JSON Web Tokens (RFC 7519): split, check the header, verify the HMAC-SHA256 signature in
//! constant time, then check `exp`/`nbf` and read `sub`. Nothing here touches the host, so it runs
//! in plain `cargo test`.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// base64url without padding (as JWTs are written), tolerating `=` padding from sloppy issuers.
/// Non-canonical trailing bits are still refused, so one signature has one spelling.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Tokens longer than this are refused before any decoding (a STOMP header line is at most a few
/// KiB anyway).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLong,
    /// Not `header.payload.signature`, or a part that is not base64url / JSON as required.
    Malformed(&'static str),
    /// `alg` is not `HS256` (this includes `none`).
    Algorithm(String),
    /// The header lists `crit` extensions, none of which this verifier understands.
    Critical,
    /// The signature does not match the secret.
    BadSignature,
    /// No numeric `exp` claim.
    MissingExp,
    /// A time claim that is not a number.
    BadTimeClaim(&'static str),
    /// `exp` is at or before now (seconds since the epoch).
    Expired { exp: f64 },
    /// `nbf` is after now.
    NotYetValid { nbf: f64 },
    /// No non-empty string `sub` claim.
    MissingSub,
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::TooLong => write!(f, "token is longer than {MAX_TOKEN_LEN} bytes"),
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::Algorithm(alg) => {
                write!(f, "token algorithm '{alg}' is not accepted (only HS256 is)")
            }
            JwtError::Critical => write!(f, "token header has 'crit' extensions, not supported"),
            JwtError::BadSignature => write!(f, "bad token signature"),
            JwtError::MissingExp => write!(f, "token has no 'exp' claim (expiry is required)"),
            JwtError::BadTimeClaim(name) => write!(f, "token claim '{name}' is not a number"),
            JwtError::Expired { exp } => write!(f, "token expired at {}", Secs(*exp)),
            JwtError::NotYetValid { nbf } => {
                write!(f, "token is not valid before {}", Secs(*nbf))
            }
            JwtError::MissingSub => write!(f, "token has no 'sub' claim (the user)"),
        }
    }
}

/// Seconds since the epoch, written as an integer when it is one.
struct Secs(f64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            write!(f, "{} (unix seconds)", self.0 as i64)
        } else {
            write!(f, "{} (unix seconds)", self.0)
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The `sub` claim.
    pub sub: String,
    /// Every claim, as decoded.
    pub claims: Map<String, Value>,
}

impl Verified {
    /// The top-level claims whose values are strings, except `sub`, in claim-name order.
    pub fn string_claims(&self) -> impl Iterator<Item = (&str, &str)> {
        self.claims
            .iter()
            .filter(|(k, _)| k.as_str() != "sub")
            .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
    }
}

/// Verifies an HS256 `token` against `secret` at `now_ms` (milliseconds since the epoch).
///
/// Order matters: the header is checked and the signature verified before the payload is parsed,
/// so unauthenticated JSON never gets past base64.
pub fn verify(token: &str, secret: &[u8], now_ms: u64) -> Result<Verified, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts (header.payload.signature)",
        ));
    };

    let header = decode_json(
        header_b64,
        "header is not base64url",
        "header is not a JSON object",
    )?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => return Err(JwtError::Algorithm(alg.clone())),
        Some(_) => return Err(JwtError::Malformed("header 'alg' is not a string")),
        None => return Err(JwtError::Malformed("header has no 'alg'")),
    }
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }

    let signature = B64URL
        .decode(sig_b64)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    // The signing input is the header and payload exactly as they appear in the token.
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature) // constant time, and rejects a wrong length
        .map_err(|_| JwtError::BadSignature)?;

    let claims = decode_json(
        payload_b64,
        "payload is not base64url",
        "payload is not a JSON object",
    )?;
    let now_s = now_ms as f64 / 1000.0;
    let exp = time_claim(&claims, "exp")?.ok_or(JwtError::MissingExp)?;
    if now_s >= exp {
        return Err(JwtError::Expired { exp });
    }
    if let Some(nbf) = time_claim(&claims, "nbf")? {
        if now_s < nbf {
            return Err(JwtError::NotYetValid { nbf });
        }
    }
    let sub = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        _ => return Err(JwtError::MissingSub),
    };
    Ok(Verified { sub, claims })
}

fn decode_json(
    part: &str,
    not_b64: &'static str,
    not_object: &'static str,
) -> Result<Map<String, Value>, JwtError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| JwtError::Malformed(not_b64))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(not_object)),
    }
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(JwtError::BadTimeClaim(name)),
    }
}

/// Builds a signed HS256 token; used by the tests (and handy for examples).
pub fn sign(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let h = B64URL.encode(header.to_string());
    let p = B64URL.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(format!("{h}.{p}").as_bytes());
    let s = B64URL.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"s3cret";
    const NOW_MS: u64 = 1_700_000_000_000;

    fn hs256() -> Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    fn token(claims: Value) -> String {
        sign(&hs256(), &claims, SECRET)
    }

    #[test]
    fn accepts_a_valid_token() {
        let t = token(json!({"sub": "alice", "exp": 1_700_000_060, "scope": "read"}));
        let v = verify(&t, SECRET, NOW_MS).unwrap();
        assert_eq!(v.sub, "alice");
        assert_eq!(v.string_claims().collect::<Vec<_>>(), [("scope", "read")]);
    }

    #[test]
    fn independently_signed_token() {
        // Signed outside this crate (Python's hmac + hashlib, secret "s3cret").
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                 eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.\
                 qRlbyNdlm8NKK6qruixbCq_HGTQfHHpTaGzC9JqMqVM";
        let v = verify(t, SECRET, NOW_MS).unwrap();
        assert_eq!(v.sub, "alice");
        assert_eq!(
            verify(t, b"other", NOW_MS).unwrap_err(),
            JwtError::BadSignature
        );
    }

    #[test]
    fn tolerates_padding() {
        let t = token(json!({"sub": "al", "exp": 1_700_000_060}));
        let padded: Vec<String> = t
            .split('.')
            .map(|p| {
                let mut p = p.to_string();
                while p.len() % 4 != 0 {
                    p.push('=');
                }
                p
            })
            .collect();
        assert_ne!(padded.join("."), t, "the test needs a part that pads");
        // The signature covers the parts as written, so re-sign the padded header.payload.
        let input = format!("{}.{}", padded[0], padded[1]);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        let sig = B64URL.encode(mac.finalize().into_bytes()) + "=";
        let t = format!("{input}.{sig}");
        assert_eq!(verify(&t, SECRET, NOW_MS).unwrap().sub, "al");
    }

    #[test]
    fn rejects_other_algorithms() {
        let claims = json!({"sub": "alice", "exp": 1_700_000_060});
        for alg in ["none", "HS384", "RS256", "hs256"] {
            let t = sign(&json!({"alg": alg}), &claims, SECRET);
            assert_eq!(
                verify(&t, SECRET, NOW_MS).unwrap_err(),
                JwtError::Algorithm(alg.into())
            );
        }
        // The classic alg=none token with an empty signature.
        let h = B64URL.encode(r#"{"alg":"none"}"#);
        let p = B64URL.encode(claims.to_string());
        assert!(matches!(
            verify(&format!("{h}.{p}."), SECRET, NOW_MS),
            Err(JwtError::Algorithm(_))
        ));
        let t = sign(&json!({"typ": "JWT"}), &claims, SECRET);
        assert!(matches!(
            verify(&t, SECRET, NOW_MS),
            Err(JwtError::Malformed(_))
        ));
        let t = sign(&json!({"alg": "HS256", "crit": ["b64"]}), &claims, SECRET);
        assert_eq!(verify(&t, SECRET, NOW_MS).unwrap_err(), JwtError::Critical);
    }

    #[test]
    fn rejects_tampering() {
        let t = token(json!({"sub": "alice", "exp": 1_700_000_060}));
        let forged_payload =
            B64URL.encode(json!({"sub": "root", "exp": 1_700_000_060}).to_string());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(&forged, SECRET, NOW_MS).unwrap_err(),
            JwtError::BadSignature
        );
        let truncated = &t[..t.len() - 2];
        assert!(verify(truncated, SECRET, NOW_MS).is_err());
        assert_eq!(
            verify(&t, b"wrong", NOW_MS).unwrap_err(),
            JwtError::BadSignature
        );
    }

    #[test]
    fn rejects_malformed() {
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!.e30.e30",
            "e30.e30.!!",
            "W10.e30.e30",
        ] {
            assert!(
                matches!(verify(t, SECRET, NOW_MS), Err(JwtError::Malformed(_))),
                "{t:?}"
            );
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            verify(&long, SECRET, NOW_MS).unwrap_err(),
            JwtError::TooLong
        );
        // A validly signed payload that is not an object.
        let t = sign(&hs256(), &json!(["sub"]), SECRET);
        assert_eq!(
            verify(&t, SECRET, NOW_MS).unwrap_err(),
            JwtError::Malformed("payload is not a JSON object")
        );
    }

    #[test]
    fn checks_time_claims() {
        let now_s = NOW_MS / 1000;
        let v = |claims| verify(&token(claims), SECRET, NOW_MS);
        assert_eq!(v(json!({"sub": "a"})).unwrap_err(), JwtError::MissingExp);
        assert_eq!(
            v(json!({"sub": "a", "exp": "soon"})).unwrap_err(),
            JwtError::BadTimeClaim("exp")
        );
        assert_eq!(
            v(json!({"sub": "a", "exp": now_s})).unwrap_err(),
            JwtError::Expired { exp: now_s as f64 }
        );
        assert!(v(json!({"sub": "a", "exp": now_s + 1})).is_ok());
        assert!(v(json!({"sub": "a", "exp": now_s as f64 + 0.5})).is_ok());
        assert_eq!(
            v(json!({"sub": "a", "exp": now_s + 60, "nbf": now_s + 10})).unwrap_err(),
            JwtError::NotYetValid {
                nbf: (now_s + 10) as f64
            }
        );
        assert!(v(json!({"sub": "a", "exp": now_s + 60, "nbf": now_s})).is_ok());
        assert_eq!(
            v(json!({"sub": "a", "exp": now_s + 60, "nbf": true})).unwrap_err(),
            JwtError::BadTimeClaim("nbf")
        );
        assert_eq!(
            JwtError::Expired { exp: 5.0 }.to_string(),
            "token expired at 5 (unix seconds)"
        );
    }

    #[test]
    fn requires_sub() {
        let v = |claims| verify(&token(claims), SECRET, NOW_MS);
        assert_eq!(
            v(json!({"exp": 1_700_000_060})).unwrap_err(),
            JwtError::MissingSub
        );
        assert_eq!(
            v(json!({"sub": "", "exp": 1_700_000_060})).unwrap_err(),
            JwtError::MissingSub
        );
        assert_eq!(
            v(json!({"sub": 7, "exp": 1_700_000_060})).unwrap_err(),
            JwtError::MissingSub
        );
    }
}
