//! Bearer JWTs: HS256, `sub` = the numeric user id, `exp` required, and an optional `role`:
//! absent for a creator, `operator` for who runs the system (queue-wide figures, every
//! creator's failed messages, the monitoring route).

use std::time::Duration;

use fanqueue_jobs::domain::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Why a token was refused. Logged, never shown: the client learns only "401".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("token subject is not a positive user id")]
    BadSubject,
    #[error("token role {0:?} is not a role (only \"operator\")")]
    BadRole(String),
}

/// What a token lets its bearer see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A creator: their own rows and figures only.
    Creator,
    /// Runs the system: also the whole queue and every creator's failures.
    Operator,
}

/// Who calls: the token's user and role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub role: Role,
}

/// `sub` as a string of digits (RFC 7519 wants a string) or, leniently, a JSON number.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Subject {
    Text(String),
    Number(i64),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Subject,
    exp: i64,
    /// Written by `issue`; not required of tokens minted elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// Signing and verification keys for one secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        // Only HS256: a token that names `none` or an RSA algorithm is refused before any
        // signature check.
        let mut validation = Validation::new(Algorithm::HS256);
        // `sub` is checked by our own Claims (jsonwebtoken's check wants a string and would
        // refuse the numeric form).
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 5;
        JwtKeys {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// A creator's token for `user` valid for `ttl`.
    pub fn issue(&self, user: UserId, ttl: Duration) -> String {
        self.issue_as(user, Role::Creator, ttl)
    }

    /// A token for `user` in `role`, valid for `ttl`.
    pub fn issue_as(&self, user: UserId, role: Role, ttl: Duration) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Subject::Text(user.to_string()),
            iat: Some(now),
            role: (role == Role::Operator).then(|| "operator".to_owned()),
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?;
        let id = match data.claims.sub {
            Subject::Text(s) => s.parse::<i64>().map_err(|_| TokenError::BadSubject)?,
            Subject::Number(n) => n,
        };
        if id <= 0 {
            return Err(TokenError::BadSubject);
        }
        let role = match data.claims.role.as_deref() {
            None => Role::Creator,
            Some("operator") => Role::Operator,
            Some(other) => return Err(TokenError::BadRole(other.to_owned())),
        };
        Ok(Caller {
            user: UserId(id),
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret.to_owned()))
    }

    #[test]
    fn issued_tokens_verify_to_their_user() {
        let k = keys("a-test-secret-of-some-length");
        let token = k.issue(UserId(7), Duration::from_secs(60));
        let caller = k.verify(&token).unwrap();
        assert_eq!((caller.user, caller.role), (UserId(7), Role::Creator));
        let op = k.issue_as(UserId(1), Role::Operator, Duration::from_secs(60));
        assert_eq!(k.verify(&op).unwrap().role, Role::Operator);
    }

    #[test]
    fn tokens_of_another_secret_are_refused() {
        let token = keys("secret-number-one-xxxx").issue(UserId(7), Duration::from_secs(60));
        assert!(keys("secret-number-two-xxxx").verify(&token).is_err());
    }

    #[test]
    fn unsigned_alg_none_tokens_are_refused() {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let exp = chrono::Utc::now().timestamp() + 3600;
        let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"7","exp":{exp}}}"#));
        let token = format!("{header}.{body}.");
        assert!(keys("a-test-secret-of-some-length").verify(&token).is_err());
    }
}
