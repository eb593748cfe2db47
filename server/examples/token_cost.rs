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
    let hs = EncodingKey::from_secret(secret);
    let mut cases = vec![("HS256", TokenVerifier::from_secret(secret).unwrap(), Algorithm::HS256, hs)];
    type Private = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
    let key_pairs: [(&str, &str, Algorithm, Private); 3] = [
        ("RS256 (2048-bit)", "rsa", Algorithm::RS256, EncodingKey::from_rsa_pem),
        ("ES256", "ec", Algorithm::ES256, EncodingKey::from_ec_pem),
        ("EdDSA", "ed", Algorithm::EdDSA, EncodingKey::from_ed_pem),
    ];
    for (name, file, algorithm, private) in key_pairs {
        let verifier = TokenVerifier::from_public_key_pem(&read(&format!("{file}-public.pem"))).unwrap();
        cases.push((name, verifier, algorithm, private(&read(&format!("{file}-private.pem"))).unwrap()));
    }
    println!("{:<18} {:>12} {:>14}", "algorithm", "µs / verify", "verifies / s");
    for (name, verifier, algorithm, key) in cases {
        let token = encode(&Header::new(algorithm), &claims, &key).unwrap();
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
