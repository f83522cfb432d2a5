//! Token verification (SPEC §4), admin checks (§7) and token minting for
//! the `token` command and dev mode.
//!
//! Keys are loaded at start-up and again on SIGHUP ([`Verifier::reload`]:
//! a bad file keeps the old keys). HMAC tokens may also be signed with one
//! of `auth.previous_secrets` during a rotation. A token's header names its algorithm;
//! it must be one of `auth.algorithms`, and the key is chosen by that
//! algorithm's family (HMAC secret, PEM public key, or the JWKS entry named
//! by `kid`), so a token can never pick a weaker key than configured. `none`
//! does not exist in `jsonwebtoken::Algorithm`, so it can never verify.

use crate::config::AuthConfig;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<String>,
    /// Room patterns the user may subscribe to (`*` matches any run of
    /// characters): the channels claim.
    pub rooms: Vec<String>,
    /// Expiry (seconds since the epoch), when the token has one.
    pub exp: Option<u64>,
}

impl Identity {
    /// Whether a pattern of the channels claim allows `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| glob_match(pattern, room))
    }
}

/// `*` matches any run of characters (none included); everything else
/// itself. Iterative, with one backtrack point: linear in practice, never
/// exponential, whatever a token says.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Why a token was refused; `code()` is the ERROR code of SPEC §4.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    Missing,
    Expired,
    /// Anything else. The reason is for logs and never contains the token.
    Invalid(&'static str),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => {
                "no token: pass ?token=, Authorization: Bearer, or the bearer.<JWT> subprotocol"
            }
            AuthError::Expired => "the token has expired",
            AuthError::Invalid(reason) => reason,
        }
    }
}

/// Result of an admin check (SPEC §7).
#[derive(Debug, PartialEq)]
pub enum Admin {
    Allowed,
    /// 401: missing or invalid credentials.
    Unauthorized,
    /// 403: a valid token without the admin role.
    Forbidden,
}

/// Verifies tokens with the configured keys and claims.
pub struct Verifier {
    /// Swapped whole by a reload; read (an `Arc` clone) once per token.
    keys: RwLock<Arc<Keys>>,
    /// Where the keys come from, for a reload.
    auth: AuthConfig,
    /// One validation per accepted algorithm, built once.
    validations: HashMap<Algorithm, Validation>,
    user_claim: String,
    roles_claim: String,
    channels_claim: String,
    admin_role: String,
    admin_api_key: String,
}

/// The key material: what a reload replaces.
struct Keys {
    /// The current secret first, then `auth.previous_secrets`.
    hmac: Vec<DecodingKey>,
    public_key: Option<DecodingKey>,
    /// JWKS keys by `kid`, converted once per load.
    jwks: HashMap<String, DecodingKey>,
}

impl Keys {
    /// Loads the key material of `auth`, and checks that every accepted
    /// algorithm has a key. Errors name the config key.
    fn load(auth: &AuthConfig) -> Result<Keys, String> {
        let mut hmac: Vec<DecodingKey> = hmac_secret(auth)?
            .map(|s| DecodingKey::from_secret(&s))
            .into_iter()
            .collect();
        if !hmac.is_empty() {
            hmac.extend(
                auth.previous_secrets
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| DecodingKey::from_secret(s.as_bytes())),
            );
        }
        let public_key = if auth.public_key_file.is_empty() {
            None
        } else {
            Some(load_public_key(&auth.public_key_file)?)
        };
        let jwks = if auth.jwks_file.is_empty() {
            HashMap::new()
        } else {
            load_jwks(&auth.jwks_file)?
        };
        let keys = Keys {
            hmac,
            public_key,
            jwks,
        };
        for name in &auth.algorithms {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("auth.algorithms: unknown algorithm {name:?}"))?;
            let has_key = match alg.family() {
                AlgorithmFamily::Hmac => !keys.hmac.is_empty(),
                _ => keys.public_key.is_some() || !keys.jwks.is_empty(),
            };
            if !has_key {
                return Err(format!(
                    "auth.algorithms: {name} needs {}",
                    if alg.family() == AlgorithmFamily::Hmac {
                        "auth.secret or auth.secret_file"
                    } else {
                        "auth.public_key_file or auth.jwks_file"
                    }
                ));
            }
        }
        Ok(keys)
    }

    /// The keys a token with `header` may be signed with, in the order to
    /// try them.
    fn for_header(&self, header: &Header) -> Result<Vec<&DecodingKey>, AuthError> {
        let no_key = AuthError::Invalid("no key for the token's algorithm");
        if header.alg.family() == AlgorithmFamily::Hmac {
            if self.hmac.is_empty() {
                return Err(no_key);
            }
            return Ok(self.hmac.iter().collect());
        }
        let key = match &header.kid {
            Some(kid) if !self.jwks.is_empty() => self
                .jwks
                .get(kid)
                .ok_or(AuthError::Invalid("unknown key id"))?,
            _ => self
                .public_key
                .as_ref()
                .or_else(|| match self.jwks.len() {
                    1 => self.jwks.values().next(),
                    _ => None,
                })
                .ok_or(no_key)?,
        };
        Ok(vec![key])
    }
}

impl Verifier {
    /// Loads the key material of `auth`. Errors name the config key.
    pub fn new(auth: &AuthConfig) -> Result<Self, String> {
        let keys = Keys::load(auth)?;
        let mut validations = HashMap::new();
        for name in &auth.algorithms {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("auth.algorithms: unknown algorithm {name:?}"))?;
            let mut v = Validation::new(alg);
            v.leeway = auth.leeway_secs;
            // jsonwebtoken checks `nbf` only when asked to; a token that is
            // not valid yet is refused like any invalid one (SPEC §4), with
            // the same leeway as `exp`.
            v.validate_nbf = true;
            // Tokens without `exp` are accepted (they never expire), as in
            // Centrifugo; an `exp` that is present is always checked.
            v.required_spec_claims.clear();
            if !auth.issuer.is_empty() {
                v.set_issuer(&[&auth.issuer]);
                v.required_spec_claims.insert("iss".into());
            }
            if auth.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[&auth.audience]);
                v.required_spec_claims.insert("aud".into());
            }
            validations.insert(alg, v);
        }
        Ok(Self {
            keys: RwLock::new(Arc::new(keys)),
            auth: auth.clone(),
            validations,
            user_claim: auth.user_claim.clone(),
            roles_claim: auth.roles_claim.clone(),
            channels_claim: auth.channels_claim.clone(),
            admin_role: auth.admin_role.clone(),
            admin_api_key: auth.admin_api_key.clone(),
        })
    }

    /// Reads the key files again (SIGHUP): on success the new keys verify
    /// every token from now on; on error the old ones stay, and the error
    /// names the key and the file.
    pub fn reload(&self) -> Result<(), String> {
        let keys = Keys::load(&self.auth)?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Verifies a client token and extracts the identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("the token is not a well-formed JWT"))?;
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or(AuthError::Invalid("the token's algorithm is not accepted"))?;
        let keys = self.keys();
        let candidates = keys.for_header(&header)?;
        let mut decoded = None;
        for key in &candidates {
            let result = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation);
            let wrong_key = matches!(&result, Err(e) if *e.kind() == ErrorKind::InvalidSignature);
            decoded = Some(result);
            // A rotation: the next secret may have signed it.
            if !wrong_key {
                break;
            }
        }
        let decoded = decoded.ok_or(AuthError::Invalid("no key for the token's algorithm"))?;
        let data = decoded.map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::Invalid("the token is not valid yet"),
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong token issuer"),
            ErrorKind::InvalidAudience => AuthError::Invalid("wrong token audience"),
            ErrorKind::InvalidSignature => AuthError::Invalid("bad token signature"),
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("wrong token algorithm"),
            _ => AuthError::Invalid("invalid token"),
        })?;
        let claims = data.claims;
        let user_id = match claims.get(&self.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => return Err(AuthError::Invalid("the token has no user claim")),
        };
        let strings = |claim: &str| -> Vec<String> {
            match claims.get(claim) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let exp = claims.get("exp").and_then(Value::as_u64);
        Ok(Identity {
            user_id,
            roles: strings(&self.roles_claim),
            rooms: strings(&self.channels_claim),
            exp,
        })
    }

    /// Checks an admin API credential: the static key, or a JWT with the
    /// admin role.
    pub fn admin(&self, bearer: Option<&str>) -> Admin {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Admin::Unauthorized;
        };
        if !self.admin_api_key.is_empty() && constant_time_eq(token, &self.admin_api_key) {
            return Admin::Allowed;
        }
        match self.verify(token) {
            Ok(id) if id.roles.contains(&self.admin_role) => Admin::Allowed,
            Ok(_) => Admin::Forbidden,
            Err(_) => Admin::Unauthorized,
        }
    }
}

/// The HMAC secret from `auth.secret` or `auth.secret_file`.
fn hmac_secret(auth: &AuthConfig) -> Result<Option<Vec<u8>>, String> {
    if !auth.secret.is_empty() {
        return Ok(Some(auth.secret.as_bytes().to_vec()));
    }
    if auth.secret_file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&auth.secret_file)
        .map_err(|e| format!("auth.secret_file: {}: {e}", auth.secret_file))?;
    // Files written by `echo` or Kubernetes tooling often end in a newline.
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err("auth.secret_file: the file is empty".into());
    }
    Ok(Some(secret.as_bytes().to_vec()))
}

fn load_public_key(path: &str) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("auth.public_key_file: {path}: {e}"))?;
    DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            format!(
                "auth.public_key_file: {path}: not an RSA, EC or Ed25519 public key in PEM form"
            )
        })
}

fn load_jwks(path: &str) -> Result<HashMap<String, DecodingKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("auth.jwks_file: {path}: {e}"))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("auth.jwks_file: {path}: not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone().unwrap_or_else(|| i.to_string());
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("auth.jwks_file: {path}: key {kid:?}: {e}"))?;
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(format!("auth.jwks_file: {path}: the set has no keys"));
    }
    Ok(keys)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a minted token says.
pub struct Mint<'a> {
    pub sub: &'a str,
    pub roles: &'a [String],
    pub ttl: Duration,
}

/// Mints an HMAC-signed token with the configured secret, claim names,
/// issuer and audience. Fails when no HMAC secret is configured.
pub fn mint(auth: &AuthConfig, what: &Mint) -> Result<String, String> {
    let secret = hmac_secret(auth)?.ok_or(
        "no HMAC secret configured: set auth.secret (GATEWAY_AUTH_SECRET) or auth.secret_file",
    )?;
    let alg = auth
        .algorithms
        .iter()
        .filter_map(|a| a.parse::<Algorithm>().ok())
        .find(|a| a.family() == AlgorithmFamily::Hmac)
        .ok_or("auth.algorithms has no HMAC algorithm (HS256/384/512) to sign with")?;
    let now = unix_now();
    let mut claims = Map::new();
    claims.insert(auth.user_claim.clone(), Value::from(what.sub));
    claims.insert(auth.roles_claim.clone(), Value::from(what.roles.to_vec()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + what.ttl.as_secs().max(1)));
    if !auth.issuer.is_empty() {
        claims.insert("iss".into(), Value::from(auth.issuer.clone()));
    }
    if !auth.audience.is_empty() {
        claims.insert("aud".into(), Value::from(auth.audience.clone()));
    }
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .map_err(|e| format!("signing failed: {e}"))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_patterns() {
        let who = Identity {
            user_id: "1".into(),
            roles: Vec::new(),
            rooms: vec!["household-7".into(), "team-*".into(), "*:public".into()],
            exp: None,
        };
        assert!(who.may_join("household-7"));
        assert!(!who.may_join("household-70"));
        assert!(who.may_join("team-"));
        assert!(who.may_join("team-red"));
        assert!(!who.may_join("xteam-red"));
        assert!(who.may_join("a:b:public"));
        assert!(!who.may_join("a:public:x"));
        assert!(glob_match("a*b*c", "aXXbYYc") && !glob_match("a*b*c", "aXXbYY"));
        let long = "a".repeat(10_000);
        assert!(
            !glob_match("*a*a*a*a*a*a*b", &long),
            "no exponential backtracking"
        );
    }

    #[test]
    fn every_refusal_code_is_counted() {
        let errors = [
            AuthError::Missing,
            AuthError::Expired,
            AuthError::Invalid("x"),
        ];
        for e in errors {
            assert!(
                crate::metrics::REFUSALS.contains(&e.code()),
                "{} is not in metrics::REFUSALS",
                e.code()
            );
        }
    }

    fn auth(secret: &str) -> AuthConfig {
        AuthConfig {
            secret: secret.into(),
            ..AuthConfig::default()
        }
    }

    fn token(a: &AuthConfig, sub: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        mint(
            a,
            &Mint {
                sub,
                roles: &roles,
                ttl: Duration::from_secs(60),
            },
        )
        .unwrap()
    }

    #[test]
    fn verifies_own_tokens() {
        let a = auth("s");
        let v = Verifier::new(&a).unwrap();
        let id = v.verify(&token(&a, "42", &["ops"])).unwrap();
        assert_eq!(id.user_id, "42");
        assert_eq!(id.roles, vec!["ops"]);
        assert!(id.exp.is_some());
    }

    #[test]
    fn refuses_bad_tokens() {
        let v = Verifier::new(&auth("s")).unwrap();
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(v.verify("garbage").unwrap_err().code(), "invalid_token");
        let other = token(&auth("other"), "42", &[]);
        assert_eq!(v.verify(&other).unwrap_err().code(), "invalid_token");
        // alg "none": header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiJ9.";
        assert_eq!(v.verify(none).unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn expired_and_issuer() {
        let mut a = auth("s");
        a.leeway_secs = 0;
        let v = Verifier::new(&a).unwrap();
        let mut claims = Map::new();
        claims.insert("sub".into(), "1".into());
        claims.insert("exp".into(), Value::from(unix_now() - 10));
        let t = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s"))
            .unwrap();
        assert_eq!(v.verify(&t), Err(AuthError::Expired));

        let mut with_iss = auth("s");
        with_iss.issuer = "finance-api".into();
        let v = Verifier::new(&with_iss).unwrap();
        assert_eq!(
            v.verify(&token(&a, "1", &[])).unwrap_err().code(),
            "invalid_token"
        );
        assert!(v.verify(&token(&with_iss, "1", &[])).is_ok());
    }

    #[test]
    fn integer_user_claim() {
        let v = Verifier::new(&auth("s")).unwrap();
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from(42));
        let t = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s"))
            .unwrap();
        assert_eq!(v.verify(&t).unwrap().user_id, "42");
    }

    #[test]
    fn admin_checks() {
        let mut a = auth("s");
        a.admin_api_key = "key".into();
        let v = Verifier::new(&a).unwrap();
        assert_eq!(v.admin(None), Admin::Unauthorized);
        assert_eq!(v.admin(Some("nope")), Admin::Unauthorized);
        assert_eq!(v.admin(Some("key")), Admin::Allowed);
        assert_eq!(v.admin(Some(&token(&a, "1", &["admin"]))), Admin::Allowed);
        assert_eq!(v.admin(Some(&token(&a, "1", &["ops"]))), Admin::Forbidden);
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Signs `sub` = 42 with a private key fixture.
    fn signed(alg: Algorithm, private: &str, kid: Option<&str>, extra: &[(&str, Value)]) -> String {
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
            AlgorithmFamily::Hmac => unreachable!(),
        }
        .unwrap();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        let mut claims = Map::new();
        claims.insert("sub".into(), "42".into());
        claims.insert("exp".into(), Value::from(unix_now() + 60));
        for (k, v) in extra {
            claims.insert(k.to_string(), v.clone());
        }
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn public_key_auth(file: &str, algs: &[&str]) -> AuthConfig {
        AuthConfig {
            public_key_file: fixture(file),
            algorithms: algs.iter().map(|a| a.to_string()).collect(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn public_key_algorithms() {
        for (alg, public, private) in [
            (Algorithm::RS256, "rsa_public.pem", "rsa_private.pem"),
            (Algorithm::PS256, "rsa_public.pem", "rsa_private.pem"),
            (Algorithm::ES256, "ec_public.pem", "ec_private.pem"),
            (Algorithm::EdDSA, "ed_public.pem", "ed_private.pem"),
        ] {
            let name = format!("{alg:?}");
            let v = Verifier::new(&public_key_auth(public, &[&name])).unwrap();
            let id = v.verify(&signed(alg, private, None, &[])).unwrap();
            assert_eq!(id.user_id, "42", "{name}");
        }
    }

    #[test]
    fn algorithm_must_be_configured() {
        // A valid RS256 token is refused when only ES256 is accepted, and an
        // HS256 token cannot use the public key as an HMAC secret.
        let v = Verifier::new(&public_key_auth("ec_public.pem", &["ES256"])).unwrap();
        let rs = signed(Algorithm::RS256, "rsa_private.pem", None, &[]);
        assert_eq!(v.verify(&rs).unwrap_err().code(), "invalid_token");
        let pem = std::fs::read_to_string(fixture("ec_public.pem")).unwrap();
        let hs = token(&auth(&pem), "42", &[]);
        assert_eq!(v.verify(&hs).unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn jwks_chooses_the_key_by_kid() {
        let a = AuthConfig {
            jwks_file: fixture("jwks.json"),
            algorithms: vec!["RS256".into()],
            ..AuthConfig::default()
        };
        let v = Verifier::new(&a).unwrap();
        let good = signed(
            Algorithm::RS256,
            "rsa_private.pem",
            Some("finance-2026"),
            &[],
        );
        assert_eq!(v.verify(&good).unwrap().user_id, "42");
        let unknown = signed(Algorithm::RS256, "rsa_private.pem", Some("other"), &[]);
        assert_eq!(v.verify(&unknown).unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn audience_and_leeway() {
        let mut a = public_key_auth("rsa_public.pem", &["RS256"]);
        a.audience = "finance-app".into();
        let v = Verifier::new(&a).unwrap();
        let right = signed(
            Algorithm::RS256,
            "rsa_private.pem",
            None,
            &[("aud", "finance-app".into())],
        );
        assert!(v.verify(&right).is_ok());
        let wrong = signed(
            Algorithm::RS256,
            "rsa_private.pem",
            None,
            &[("aud", "other".into())],
        );
        assert_eq!(v.verify(&wrong).unwrap_err().code(), "invalid_token");
        let none = signed(Algorithm::RS256, "rsa_private.pem", None, &[]);
        assert_eq!(v.verify(&none).unwrap_err().code(), "invalid_token");

        // Expired 10 s ago: accepted within a 30 s leeway, refused without.
        let expired = [("exp", Value::from(unix_now() - 10))];
        let token = signed(Algorithm::RS256, "rsa_private.pem", None, &expired);
        let mut lenient = public_key_auth("rsa_public.pem", &["RS256"]);
        lenient.leeway_secs = 30;
        assert!(Verifier::new(&lenient).unwrap().verify(&token).is_ok());
        lenient.leeway_secs = 0;
        assert_eq!(
            Verifier::new(&lenient).unwrap().verify(&token),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn key_errors_name_the_key() {
        let missing = public_key_auth("nope.pem", &["RS256"]);
        assert!(Verifier::new(&missing)
            .err()
            .unwrap()
            .contains("auth.public_key_file"));
        let hs_without_secret = public_key_auth("rsa_public.pem", &["HS256"]);
        assert!(Verifier::new(&hs_without_secret)
            .err()
            .unwrap()
            .contains("auth.algorithms"));
    }
}
