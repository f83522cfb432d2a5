//! Tokens: minted by the real `ws-gateway token`, cached.

use super::*;

/// Mints a token with the suite's secret. Tokens with a long TTL are cached.
pub fn mint(sub: &str, roles: &[&str], ttl: &str) -> String {
    mint_with_secret(SECRET, sub, roles, ttl)
}

/// A one-hour token for `sub` with `roles`.
pub fn token(sub: &str, roles: &[&str]) -> String {
    mint(sub, roles, "1h")
}

/// A one-hour admin token.
pub fn admin_token() -> String {
    mint("admin-user", &["admin"], "1h")
}

pub fn mint_with_secret(secret: &str, sub: &str, roles: &[&str], ttl: &str) -> String {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cacheable = ttl == "1h";
    let key = format!("{secret}\0{sub}\0{}\0{ttl}", roles.join(","));
    if cacheable {
        if let Some(t) = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .get(&key)
        {
            return t.clone();
        }
    }
    let roles_joined = roles.join(",");
    let mut args = vec!["token", "--sub", sub, "--ttl", ttl];
    if !roles.is_empty() {
        args.push("--roles");
        args.push(&roles_joined);
    }
    let out = run_cli(&args, &[("GATEWAY_AUTH_SECRET", secret)]);
    assert!(
        out.status.success(),
        "`ws-gateway {}` failed: {:?}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = String::from_utf8(out.stdout)
        .expect("token output is UTF-8")
        .trim()
        .to_string();
    assert_eq!(
        tok.split('.').count(),
        3,
        "`ws-gateway token` should print a JWT alone on stdout, got {tok:?}"
    );
    if cacheable {
        CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .insert(key, tok.clone());
    }
    tok
}

/// A token with exactly `claims` (HS256 with [`SECRET`]): for claims the
/// CLI does not mint (channels, a short exp, odd user ids).
pub fn mint_claims(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign the token")
}
