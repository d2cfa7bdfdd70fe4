//! Cross-site request forgery defence for what a browser sends with the session cookie.
//!
//! A write authenticated by the cookie must carry `Content-Type: application/json` (which a
//! plain form or `text/plain` post from another site cannot, and a cross-origin `fetch` cannot
//! without a CORS preflight this api never grants) and come from this origin: the browser's
//! `Sec-Fetch-Site` says `same-origin`, or, from a browser that sends no fetch metadata, the
//! `Origin` names the host the request was sent to. Sign-in and sign-out check the origin the
//! same way (a forged sign-in would put the victim in the attacker's session). Bearer-token
//! requests need neither: no browser attaches a bearer token by itself.

use crate::error::ApiError;
use axum::http::header::{CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderMap, Method};

/// Whether a method changes nothing (and so needs no forgery check).
pub fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request was made by a page of this very origin.
pub fn is_same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

/// Whether the body is declared as JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Refuses (403) a cookie-authenticated write that is not same-origin JSON.
pub fn check_cookie_write(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if is_read(method) {
        return Ok(());
    }
    if !is_same_origin(headers) {
        return Err(ApiError::CrossSite(
            "cross-site request refused: a write with the session cookie must come from this origin",
        ));
    }
    if !is_json(headers) {
        return Err(ApiError::CrossSite(
            "a write with the session cookie must send Content-Type: application/json",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn origin_is_judged_by_fetch_metadata_then_by_origin_and_host() {
        assert!(is_same_origin(&headers(&[(
            "sec-fetch-site",
            "same-origin"
        )])));
        assert!(!is_same_origin(&headers(&[(
            "sec-fetch-site",
            "same-site"
        )])));
        assert!(!is_same_origin(&headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://lb:8000"),
            ("host", "lb:8000"),
        ])));
        assert!(is_same_origin(&headers(&[
            ("origin", "http://lb:8000"),
            ("host", "lb:8000")
        ])));
        assert!(!is_same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "lb:8000")
        ])));
        assert!(!is_same_origin(&headers(&[
            ("origin", "http://lb:8001"),
            ("host", "lb:8000")
        ])));
        assert!(!is_same_origin(&headers(&[
            ("origin", "null"),
            ("host", "lb")
        ])));
        assert!(!is_same_origin(&headers(&[("host", "lb:8000")])));
    }

    #[test]
    fn cookie_writes_need_same_origin_json() {
        let same = [("sec-fetch-site", "same-origin")];
        assert!(check_cookie_write(&Method::GET, &headers(&[])).is_ok());
        assert!(check_cookie_write(
            &Method::POST,
            &headers(&[same[0], ("content-type", "application/json; charset=utf-8")])
        )
        .is_ok());
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let h: HeaderMap = [
                (
                    "sec-fetch-site".parse().unwrap(),
                    "same-origin".parse().unwrap(),
                ),
                (CONTENT_TYPE, ct.parse().unwrap()),
            ]
            .into_iter()
            .collect();
            assert!(check_cookie_write(&Method::POST, &h).is_err(), "{ct}");
        }
        assert!(check_cookie_write(&Method::DELETE, &headers(&same)).is_err());
        assert!(check_cookie_write(
            &Method::PUT,
            &headers(&[
                ("sec-fetch-site", "cross-site"),
                ("content-type", "application/json")
            ])
        )
        .is_err());
    }
}
