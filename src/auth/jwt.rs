//! Access tokens: HS256, with `exp`, `iss` and `aud` required and validated. The algorithm is
//! pinned on verification, so `alg: none` or an RS/HS confusion token is rejected.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Role;
use crate::config::JwtConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string per RFC 7519.
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl JwtKeys {
    pub fn new(cfg: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(cfg.secret.as_bytes()),
            decoding: DecodingKey::from_secret(cfg.secret.as_bytes()),
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            ttl: cfg.ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user_id: i64, role: Role) -> String {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    pub fn verify(&self, token: &str) -> Option<Claims> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn cfg(secret: &str, issuer: &str) -> JwtConfig {
        JwtConfig {
            secret: secret.into(),
            issuer: issuer.into(),
            audience: "orderflow-api".into(),
            ttl: Duration::from_secs(60),
            random_secret: false,
        }
    }

    #[test]
    fn round_trip() {
        let keys = JwtKeys::new(&cfg("s3cret", "orderflow"));
        let claims = keys.verify(&keys.issue(7, Role::Admin)).unwrap();
        assert_eq!(claims.sub, "7");
        assert_eq!(claims.role, Role::Admin);
    }

    #[test]
    fn wrong_secret_or_issuer_is_rejected() {
        let keys = JwtKeys::new(&cfg("s3cret", "orderflow"));
        let other_secret = JwtKeys::new(&cfg("other", "orderflow"));
        let other_issuer = JwtKeys::new(&cfg("s3cret", "someone-else"));
        assert!(keys.verify(&other_secret.issue(1, Role::User)).is_none());
        assert!(keys.verify(&other_issuer.issue(1, Role::User)).is_none());
    }

    #[test]
    fn alg_none_is_rejected() {
        let keys = JwtKeys::new(&cfg("s3cret", "orderflow"));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let now = Utc::now().timestamp();
        let body = b64.encode(format!(
            r#"{{"sub":"1","role":"ADMIN","iss":"orderflow","aud":"orderflow-api","iat":{now},"exp":{}}}"#,
            now + 600
        ));
        assert!(keys.verify(&format!("{header}.{body}.")).is_none());
    }

    #[test]
    fn expired_token_is_rejected() {
        let keys = JwtKeys::new(&cfg("s3cret", "orderflow"));
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: "1".into(),
            role: Role::User,
            iss: "orderflow".into(),
            aud: "orderflow-api".into(),
            iat: now - 600,
            exp: now - 300,
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(keys.verify(&token).is_none());
    }
}
