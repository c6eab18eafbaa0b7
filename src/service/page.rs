//! Cursor pagination shared by the list use cases: page sizes and opaque page tokens.
//!
//! A token is `<kind>.<cursor>.<filters>` in base64url: the position after the last row served,
//! and a tag of the filters it was made for, so that a token is refused with other filters
//! instead of silently paging through a different list.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::Violations;

/// A requested page size: 0 means `default`; more than `max` is capped (AIP-158), not refused;
/// a negative one is a violation.
pub(super) fn page_size(requested: i32, default: u32, max: u32, v: &mut Violations) -> u32 {
    match requested {
        0 => default,
        n if n < 0 => {
            v.push("page_size", "page_size must not be negative");
            default
        }
        n => u32::try_from(n).unwrap_or(max).min(max),
    }
}

pub(super) fn encode_token(kind: &str, cursor: &str, filters: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}.{cursor}.{filters}"))
}

/// The cursor of a token of `kind` made for `filters`; records a violation (and returns `None`)
/// for anything else. An empty token is the first page.
pub(super) fn decode_token(
    token: &str,
    kind: &str,
    filters: &str,
    v: &mut Violations,
) -> Option<String> {
    if token.is_empty() {
        return None;
    }
    let decoded = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let parts = decoded.as_deref().and_then(|text| {
        let rest = text.strip_prefix(kind)?.strip_prefix('.')?;
        rest.split_once('.')
    });
    match parts {
        Some((cursor, tag)) if tag == filters => Some(cursor.to_owned()),
        Some(_) => {
            v.push(
                "page_token",
                "page_token was made for different filters; send the same filters as the first page",
            );
            None
        }
        None => {
            v.push(
                "page_token",
                "page_token is not a token this service issued",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_other_filters_kinds_and_garbage() {
        let token = encode_token("v1", "rf_abc", "f00d");
        let mut v = Violations::default();
        assert_eq!(
            decode_token(&token, "v1", "f00d", &mut v).as_deref(),
            Some("rf_abc")
        );
        assert_eq!(decode_token("", "v1", "f00d", &mut v), None);
        assert!(v.into_result(|| Some(())).is_ok());

        for (token, kind, filters) in [
            (token.as_str(), "v1", "beef"),
            (token.as_str(), "i1", "f00d"),
            ("not a token", "v1", "f00d"),
        ] {
            let mut v = Violations::default();
            assert_eq!(decode_token(token, kind, filters, &mut v), None);
            let fields: Vec<_> = v
                .into_result(|| Some(()))
                .unwrap_err()
                .into_iter()
                .map(|f| f.field)
                .collect();
            assert_eq!(fields, ["page_token"]);
        }
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        let mut v = Violations::default();
        assert_eq!(page_size(0, 50, 500, &mut v), 50);
        assert_eq!(page_size(7, 50, 500, &mut v), 7);
        assert_eq!(page_size(100_000, 50, 500, &mut v), 500);
        assert!(v.into_result(|| Some(())).is_ok());
        let mut v = Violations::default();
        page_size(-1, 50, 500, &mut v);
        assert!(v.into_result(|| Some(())).is_err());
    }
}
