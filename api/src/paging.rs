//! Cursor paging for operator listings: a page size within bounds and an opaque cursor that
//! names where the previous page ended.

use crate::error::{ApiError, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Rows per page when the caller names none.
pub const DEFAULT_LIMIT: i64 = 100;
/// The most rows one page may ask for.
pub const MAX_LIMIT: i64 = 1000;

/// The page size asked for: `DEFAULT_LIMIT` when absent, 1 to `MAX_LIMIT` otherwise.
pub fn limit(asked: Option<i64>) -> Result<i64> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", format!("1 to {MAX_LIMIT}"))),
    }
}

/// Encodes where a page ended as an opaque, URL-safe cursor.
pub fn encode<T: Serialize>(position: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).expect("a cursor position serializes"))
}

/// Reads a cursor made by [`encode`]; anything else is a 422 naming `cursor`.
pub fn decode<T: DeserializeOwned>(cursor: Option<&str>) -> Result<Option<T>> {
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("cursor", "a nextCursor from an earlier page"))
}

/// Given the rows of a query asked for `limit + 1` rows, keeps the first `limit` and returns
/// the cursor of the next page (where the last kept row ends, as `position` gives it), or
/// `None` when no row beyond the page came back.
pub fn next_cursor<T, P: Serialize>(
    rows: &mut Vec<T>,
    limit: i64,
    position: impl FnOnce(&T) -> P,
) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(|last| encode(&position(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_stay_in_bounds() {
        assert_eq!(limit(None).unwrap(), 100);
        assert_eq!(limit(Some(1000)).unwrap(), 1000);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(1001)).is_err());
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let c = encode(&("host-1", 7));
        assert_eq!(
            decode::<(String, i32)>(Some(&c)).unwrap(),
            Some(("host-1".into(), 7))
        );
        assert_eq!(decode::<(String, i32)>(None).unwrap(), None);
        assert!(decode::<(String, i32)>(Some("not a cursor!")).is_err());
        assert!(decode::<(String, i32)>(Some(&encode(&"other shape"))).is_err());
    }

    #[test]
    fn a_page_keeps_its_limit_and_names_where_it_ended() {
        let mut rows = vec![1, 2, 3];
        assert_eq!(next_cursor(&mut rows, 3, |r| *r), None);
        assert_eq!(rows, [1, 2, 3]);
        let mut rows = vec![1, 2, 3];
        let cursor = next_cursor(&mut rows, 2, |r| *r);
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode::<i32>(cursor.as_deref()).unwrap(), Some(2));
    }
}
