//! The bearer token of an `Authorization` header, read the same way by every route that takes
//! one (the agent API, the operator API, the gateway's handshakes).

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, token
/// trimmed); `None` when there is no such header or it names another scheme.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_case_insensitive_and_strict() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer vf_node_x".parse().unwrap());
        assert_eq!(bearer(&h), Some("vf_node_x"));
        h.insert(AUTHORIZATION, "bearer  vf_node_y".parse().unwrap());
        assert_eq!(bearer(&h), Some("vf_node_y"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
