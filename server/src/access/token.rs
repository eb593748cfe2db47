//! Connection tokens: JWTs signed by the application's auth service, verified with
//! `jsonwebtoken` (HS256/384/512 with a shared secret; RS256/384/512, ES256/384 or EdDSA with a
//! public key), never by hand.
//!
//! Claims: `sub` (the user, required), `exp` (required), optional `iss`/`aud` checked when the
//! server is configured with them, and `channels`: grants `{"match": PATTERN, "allow": [OPS]}`
//! (see [`super::policy`]), at most [`MAX_GRANTS`] of them.

use super::policy::{Grant, Op, Ops};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use std::path::Path;

/// Most grants one token may carry.
pub const MAX_GRANTS: usize = 64;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 << 10;
/// Longest `sub` accepted, in bytes.
pub const MAX_USER_LEN: usize = 256;

/// Who a verified token says the connection is, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`.
    pub user: String,
    /// The token's `exp`, in Unix seconds.
    pub expires: u64,
    /// The token's grants, in order.
    pub grants: Vec<Grant>,
}

/// Why a token was refused (sent to the client with code `unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// The key tokens are checked with.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    /// For logs: which kind of key.
    kind: &'static str,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kind", &self.kind)
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Vec<GrantClaim>,
}

#[derive(Deserialize)]
struct GrantClaim {
    #[serde(rename = "match")]
    pattern: String,
    allow: Vec<String>,
}

impl TokenVerifier {
    /// Verifies HS256/384/512 tokens signed with `secret`.
    ///
    /// # Errors
    /// When the secret is shorter than 32 bytes (guessable).
    pub fn from_secret(secret: &[u8]) -> Result<TokenVerifier, String> {
        if secret.len() < 32 {
            return Err(format!("the token secret is {} bytes; use at least 32 random bytes", secret.len()));
        }
        let algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        Ok(TokenVerifier::with(DecodingKey::from_secret(secret), algorithms, "shared secret"))
    }

    /// Verifies tokens signed with the private half of the PEM public key in `path`: RSA
    /// (RS256/384/512), EC (ES256/384) or Ed25519 (EdDSA).
    ///
    /// # Errors
    /// When the file cannot be read or holds no usable public key.
    pub fn from_public_key_file(path: &Path) -> Result<TokenVerifier, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TokenVerifier::from_public_key_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// As [`TokenVerifier::from_public_key_file`], from PEM text.
    ///
    /// # Errors
    /// When the PEM holds no RSA, EC or Ed25519 public key.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<TokenVerifier, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            let algorithms = vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
            return Ok(TokenVerifier::with(key, algorithms, "RSA public key"));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(TokenVerifier::with(key, vec![Algorithm::ES256, Algorithm::ES384], "EC public key"));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(TokenVerifier::with(key, vec![Algorithm::EdDSA], "Ed25519 public key"));
        }
        Err("no RSA, EC or Ed25519 public key in PEM format".into())
    }

    fn with(key: DecodingKey, algorithms: Vec<Algorithm>, kind: &'static str) -> TokenVerifier {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        TokenVerifier { key, validation, kind }
    }

    /// Also requires `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: &str) -> TokenVerifier {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Also requires `aud` to include `audience`.
    pub fn audience(mut self, audience: &str) -> TokenVerifier {
        self.validation.set_audience(&[audience]);
        self
    }

    /// What kind of key checks the tokens.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Verifies `token` and reads its identity.
    ///
    /// # Errors
    /// A [`TokenError`] saying what is wrong: malformed, wrong algorithm or signature, expired,
    /// not yet valid, wrong issuer or audience, or claims the server does not accept.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError(format!(
                "the token is {} bytes; at most {MAX_TOKEN_LEN} are accepted",
                token.len()
            )));
        }
        let header = decode_header(token).map_err(|e| TokenError(format!("malformed token: {e}")))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(TokenError(format!(
                "tokens signed with {:?} are not accepted by this server's {}",
                header.alg, self.kind
            )));
        }
        let claims = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| TokenError(describe(&e)))?.claims;
        identity(claims)
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim:?} claim"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".into(),
        _ => format!("invalid token: {e}"),
    }
}

fn identity(claims: Claims) -> Result<Identity, TokenError> {
    let user = claims.sub;
    if user.is_empty()
        || user.len() > MAX_USER_LEN
        || user.contains(['*', '{', '}'])
        || user.chars().any(char::is_control)
    {
        return Err(TokenError(format!(
            "the token's sub must be 1 to {MAX_USER_LEN} bytes without `*`, braces or control characters"
        )));
    }
    if claims.channels.len() > MAX_GRANTS {
        return Err(TokenError(format!(
            "the token has {} channel grants; at most {MAX_GRANTS} are accepted",
            claims.channels.len()
        )));
    }
    let grants = claims
        .channels
        .iter()
        .map(|claim| {
            let allow: Ops = claim
                .allow
                .iter()
                .map(|name| name.parse::<Op>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TokenError(format!("channel grant {:?}: {e}", claim.pattern)))?
                .into_iter()
                .collect();
            Grant::new(&claim.pattern, &user, allow)
                .map_err(|e| TokenError(format!("channel grant {:?}: {e}", claim.pattern)))
        })
        .collect::<Result<_, _>>()?;
    Ok(Identity { user, expires: claims.exp, grants })
}
