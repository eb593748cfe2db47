//! What verifying a connection token costs, per algorithm: signs one token per key of
//! `server/tests/keys` and times `TokenVerifier::verify` on it.
//!
//! ```text
//! cargo run --release -p redistribute --example token_cost
//! ```

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use redistribute::access::TokenVerifier;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let read = |name: &str| std::fs::read(keys.join(name)).expect("the test keys");
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = serde_json::json!({
        "sub": "ann", "exp": exp,
        "channels": [{"match": "user:{sub}", "allow": ["subscribe", "history", "publish"]},
                     {"match": "public:*", "allow": ["subscribe", "history"]}],
    });
    let secret = b"a benchmark secret of at least thirty-two bytes";
    let cases: Vec<(&str, TokenVerifier, String)> = vec![
        (
            "HS256",
            TokenVerifier::from_secret(secret).unwrap(),
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap(),
        ),
        (
            "RS256 (2048-bit)",
            TokenVerifier::from_public_key_pem(&read("rsa-public.pem")).unwrap(),
            encode(
                &Header::new(Algorithm::RS256),
                &claims,
                &EncodingKey::from_rsa_pem(&read("rsa-private.pem")).unwrap(),
            )
            .unwrap(),
        ),
        (
            "ES256",
            TokenVerifier::from_public_key_pem(&read("ec-public.pem")).unwrap(),
            encode(
                &Header::new(Algorithm::ES256),
                &claims,
                &EncodingKey::from_ec_pem(&read("ec-private.pem")).unwrap(),
            )
            .unwrap(),
        ),
        (
            "EdDSA",
            TokenVerifier::from_public_key_pem(&read("ed-public.pem")).unwrap(),
            encode(
                &Header::new(Algorithm::EdDSA),
                &claims,
                &EncodingKey::from_ed_pem(&read("ed-private.pem")).unwrap(),
            )
            .unwrap(),
        ),
    ];
    println!("{:<18} {:>12} {:>14}", "algorithm", "µs / verify", "verifies / s");
    for (name, verifier, token) in cases {
        verifier.verify(&token).expect("a valid token");
        let started = Instant::now();
        let mut runs = 0u32;
        while started.elapsed() < Duration::from_secs(1) {
            verifier.verify(&token).expect("a valid token");
            runs += 1;
        }
        let each = started.elapsed() / runs;
        println!("{name:<18} {:>12.1} {:>14.0}", each.as_secs_f64() * 1e6, 1.0 / each.as_secs_f64());
    }
}
