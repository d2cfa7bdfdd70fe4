//! Token formats, generation and hashing.
//!
//! Issued tokens are `<prefix><lookup>_<secret>`: the lookup id (16 hex) finds the row with
//! one indexed read, the secret (48 hex, 192 random bits) is what the stored hash protects.
//! No token is stored in clear: a node token, which only the server makes, as its SHA-256
//! ([`node_digest`]); what a person may choose or type (operator and enrollment tokens) as a
//! bcrypt hash of the secret.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of node tokens.
pub const NODE_PREFIX: &str = "vf_node_";
/// Prefix of enrollment tokens.
pub const ENROLL_PREFIX: &str = "vf_enroll_";
/// Prefix of operator tokens issued by Flotilla.
pub const OPERATOR_PREFIX: &str = "vf_op_";

const LOOKUP_LEN: usize = 16;
const SECRET_LEN: usize = 48;

/// A token split into its lookup id and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    /// Public part, indexed in the database.
    pub lookup: &'a str,
    /// Secret part, verified against the stored hash.
    pub secret: &'a str,
}

impl std::fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedToken")
            .field("lookup", &self.lookup)
            .finish_non_exhaustive()
    }
}

/// A freshly issued token: show `token` once, store `lookup` and `hash`.
#[derive(Clone)]
pub struct IssuedToken {
    /// The full token, handed to its owner exactly once.
    pub token: String,
    /// The lookup id to store.
    pub lookup: String,
    /// The secret (to be hashed by the caller).
    pub secret: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("lookup", &self.lookup)
            .finish_non_exhaustive()
    }
}

fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len / 2];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Issues a new token with the given prefix.
pub fn issue(prefix: &str) -> IssuedToken {
    let lookup = random_hex(LOOKUP_LEN);
    let secret = random_hex(SECRET_LEN);
    IssuedToken {
        token: format!("{prefix}{lookup}_{secret}"),
        lookup,
        secret,
    }
}

/// Splits a token of the given prefix; `None` for anything malformed (no database work needed).
pub fn parse<'a>(prefix: &str, token: &'a str) -> Option<ParsedToken<'a>> {
    let rest = token.strip_prefix(prefix)?;
    let (lookup, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(lookup, LOOKUP_LEN) && hex_of(secret, SECRET_LEN))
        .then_some(ParsedToken { lookup, secret })
}

/// SHA-256 of a token, used as a cache key so no token is kept in memory.
pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The digest stored for a node token: SHA-256 of the whole token. Its 192 random bits make a
/// slow hash pointless (no guess list to slow down), so checking one costs microseconds.
pub fn node_digest(token: &str) -> [u8; 32] {
    sha256(token)
}

/// Whether `token`'s digest equals the `stored` one, compared in constant time.
pub fn node_digest_matches(token: &str, stored: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    node_digest(token).as_slice().ct_eq(stored).into()
}

/// Hex SHA-256 of arbitrary bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lookup id and bcrypt input for an operator token.
///
/// Issued tokens carry their lookup id. A free-form token (the bootstrap admin token) gets a
/// deliberately short 4-hex lookup from its SHA-256 (too short to help a brute force) and
/// its SHA-256 as bcrypt input (bcrypt reads at most 72 bytes).
pub fn operator_parts(token: &str) -> (String, String) {
    match parse(OPERATOR_PREFIX, token) {
        Some(p) => (p.lookup.to_owned(), p.secret.to_owned()),
        None => {
            let digest = sha256_hex(token.as_bytes());
            (format!("x{}", &digest[..4]), digest)
        }
    }
}

/// Shortest free-form operator token accepted as the bootstrap admin token.
pub const MIN_FREE_FORM_LEN: usize = 40;
/// Least number of guesses (log10) a free-form bootstrap admin token must need, as zxcvbn
/// estimates it: 10^30 is about 100 bits.
pub const MIN_FREE_FORM_GUESSES_LOG10: f64 = 30.0;
/// zxcvbn's estimate saturates near 10^19, so a token is scored in pieces this long.
const PIECE: usize = 16;

/// Whether `token` may be the bootstrap admin token: an issued `vf_op_` token, or a free-form
/// one of at least [`MIN_FREE_FORM_LEN`] characters that zxcvbn — which knows common
/// passwords, words, names, repeats, sequences, keyboard walks and dates — estimates to need at
/// least 10^[`MIN_FREE_FORM_GUESSES_LOG10`] guesses. It is scored in 16-character pieces (the
/// estimate saturates beyond), each against the earlier ones, so a repeated piece adds nothing.
/// What `openssl rand -hex 32` makes passes; a phrase, a repeated word or a walk does not. A
/// free-form token's lookup id is only 16 bits, so its strength is what stands against
/// guessing.
pub fn strong_enough_for_bootstrap(token: &str) -> bool {
    if parse(OPERATOR_PREFIX, token).is_some() {
        return true;
    }
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < MIN_FREE_FORM_LEN {
        return false;
    }
    let mut earlier: Vec<String> = Vec::new();
    let mut guesses_log10 = 0.0;
    for piece in chars.chunks(PIECE) {
        let piece: String = piece.iter().collect();
        let known: Vec<&str> = earlier.iter().map(String::as_str).collect();
        guesses_log10 += zxcvbn::zxcvbn(&piece, &known).guesses_log10();
        earlier.push(piece);
    }
    guesses_log10 >= MIN_FREE_FORM_GUESSES_LOG10
}

/// A short, safe hint of a token for display (`vf_enroll_1a2b…`).
pub fn hint(token: &str, prefix: &str) -> String {
    let lookup: String = token
        .strip_prefix(prefix)
        .unwrap_or(token)
        .chars()
        .take(4)
        .collect();
    format!("{prefix}{lookup}…")
}

/// bcrypt-hashes a secret on the blocking pool.
pub async fn hash_secret(secret: String, cost: u32) -> Result<String, bcrypt::BcryptError> {
    tokio::task::spawn_blocking(move || bcrypt::hash(secret, cost))
        .await
        .expect("bcrypt task panicked")
}

/// bcrypt-verifies a secret on the blocking pool; a malformed stored hash counts as a mismatch.
pub async fn verify_secret(secret: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || bcrypt::verify(secret, &hash).unwrap_or(false))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_parse_back() {
        let t = issue(NODE_PREFIX);
        assert!(t.token.starts_with("vf_node_"));
        let p = parse(NODE_PREFIX, &t.token).unwrap();
        assert_eq!(p.lookup, t.lookup);
        assert_eq!(p.secret, t.secret);
        assert!(parse(ENROLL_PREFIX, &t.token).is_none());
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            "",
            "vf_node_",
            "vf_node_abc",
            "vf_node_0123456789abcdef",
            "vf_node_0123456789abcdef_short",
            "vf_node_0123456789abcdeg_000000000000000000000000000000000000000000000000",
            "vf_node_0123456789abcdef_00000000000000000000000000000000000000000000000z",
            "vf_node_0123456789abcdef_0000000000000000000000000000000000000000000000000",
            "Bearer vf_node_x",
        ] {
            assert!(parse(NODE_PREFIX, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_secret() {
        let t = issue(NODE_PREFIX);
        assert!(!format!("{t:?}").contains(&t.secret));
        let p = parse(NODE_PREFIX, &t.token).unwrap();
        assert!(!format!("{p:?}").contains(&t.secret));
    }

    #[test]
    fn operator_parts_for_free_form_and_issued_tokens() {
        let (lookup, secret) = operator_parts("my-admin-token");
        assert_eq!(lookup.len(), 5);
        assert_eq!(secret.len(), 64);
        let t = issue(OPERATOR_PREFIX);
        assert_eq!(
            operator_parts(&t.token),
            (t.lookup.clone(), t.secret.clone())
        );
    }

    #[test]
    fn node_digests_match_only_their_token() {
        let t = issue(NODE_PREFIX);
        let stored = node_digest(&t.token);
        assert!(node_digest_matches(&t.token, &stored));
        assert!(!node_digest_matches(&issue(NODE_PREFIX).token, &stored));
        assert!(!node_digest_matches(&t.token, &stored[..31]));
        assert!(!node_digest_matches(&t.token, b""));
    }

    #[test]
    fn only_strong_tokens_may_bootstrap() {
        assert!(strong_enough_for_bootstrap(&issue(OPERATOR_PREFIX).token));
        // What `openssl rand -hex 32` makes, every time.
        for _ in 0..200 {
            assert!(strong_enough_for_bootstrap(&random_hex(64)));
        }
        assert!(!strong_enough_for_bootstrap(&random_hex(32)), "too short");
        // The fixed tokens the tests and the bench start with.
        for fixed in [
            "9f2c4e7a1b3d5f608e2a4c6b8d0f1e3a5c7b9d1f3e5a7c9b0d2f4e6a8c1b3d5f",
            "log-test-admin-8e1a3c5f7b9d2e4a6c8f0b1d3e5a7c9f2b4d6e8a0c1f3b5d",
            "test-admin-0d4f8a2c6e1b3957a8c0e2f4b6d81a3c5e7f9b2d4a6c8e0f",
            "browser-admin-5c1e9a7d3b2f4e6a8c0d1f3b5a7e9c2d4f6b8a0e1c3d5f7a",
            "bench-admin-5b7d9f1a3c5e7092b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5",
        ] {
            assert!(strong_enough_for_bootstrap(fixed), "{fixed}");
        }
        for weak in [
            "",
            "flotilla-admin",
            "change-me",
            "test-admin-token",
            &"a".repeat(64),
            &"ab".repeat(32),
            "correct-horse-battery-staple",
            "flotilla-admin-flotilla-admin-fl",
            "passwordpasswordpasswordpassword12",
            "my-flotilla-admin-password-2024!",
            "abcdefghijklmnopqrstuvwxyz012345",
            "qwertyuiopasdfghjklzxcvbnm1234567890",
            "my-company-flotilla-prod-admin-2026",
            "correcthorsebatterystaplecorrecthorse",
            "0d4f8a2c6e1b39570d4f8a2c6e1b39570d4f8a2c6e1b3957",
        ] {
            assert!(!strong_enough_for_bootstrap(weak), "{weak}");
        }
    }

    #[test]
    fn hint_is_short() {
        let t = issue(ENROLL_PREFIX);
        let h = hint(&t.token, ENROLL_PREFIX);
        assert!(h.len() < 20 && !h.contains(&t.secret));
    }
}
