//! Key extraction: which city or user a request is for.
//!
//! An ordered list of sources is tried; the first that yields a non-empty,
//! well-formed value wins. Pure: it reads the request head only, never the
//! body, and nothing a client sends can make it panic (property-tested).

use http::{HeaderMap, Uri};
use serde::{Deserialize, Serialize};

/// What a source yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    City,
    User,
}

/// Where a key is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeySource {
    /// A request header, e.g. `X-City-Id`.
    Header { name: String, kind: KeyKind },
    /// A query parameter, e.g. `city` in `/orders?city=010`.
    Query { name: String, kind: KeyKind },
    /// A cookie, e.g. `uid`.
    Cookie { name: String, kind: KeyKind },
    /// A path segment by 0-based index, e.g. 1 in `/cities/010/orders`;
    /// with `after`, the segment following the first segment equal to it.
    Path {
        #[serde(default)]
        segment: Option<usize>,
        #[serde(default)]
        after: Option<String>,
        kind: KeyKind,
    },
}

impl KeySource {
    pub fn kind(&self) -> KeyKind {
        match self {
            KeySource::Header { kind, .. }
            | KeySource::Query { kind, .. }
            | KeySource::Cookie { kind, .. }
            | KeySource::Path { kind, .. } => *kind,
        }
    }
}

/// The key a request is routed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    City(String),
    User(String),
}

/// The longest key value accepted; anything longer is treated as absent
/// (it cannot be a real city or user id, and must not reach logs unbounded).
pub const MAX_KEY_LEN: usize = 128;

fn accept(value: &str) -> Option<&str> {
    let v = value.trim();
    (!v.is_empty()
        && v.len() <= MAX_KEY_LEN
        && v.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80))
    .then_some(v)
}

fn make(kind: KeyKind, v: &str) -> Key {
    match kind {
        KeyKind::City => Key::City(v.to_string()),
        KeyKind::User => Key::User(v.to_string()),
    }
}

/// Percent-decodes a query or path component; `None` if it is not valid
/// UTF-8 after decoding.
fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn from_query(uri: &Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k).as_deref() == Some(name))
            .then(|| decode(v))
            .flatten()
    })
}

fn from_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|c| {
            let (k, v) = c.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
        })
}

fn from_path(uri: &Uri, segment: Option<usize>, after: Option<&str>) -> Option<String> {
    let mut segs = uri.path().split('/').filter(|s| !s.is_empty());
    let raw = match (segment, after) {
        (_, Some(marker)) => {
            segs.by_ref().find(|s| *s == marker)?;
            segs.next()?
        }
        (Some(i), None) => segs.nth(i)?,
        (None, None) => return None,
    };
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// The first key found by `sources`, in order.
pub fn extract(sources: &[KeySource], uri: &Uri, headers: &HeaderMap) -> Option<Key> {
    for source in sources {
        // Borrowed where it can be: the key is copied once, when accepted.
        let found: Option<std::borrow::Cow<'_, str>> = match source {
            KeySource::Header { name, .. } => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(std::borrow::Cow::Borrowed),
            KeySource::Query { name, .. } => from_query(uri, name).map(Into::into),
            KeySource::Cookie { name, .. } => from_cookie(headers, name).map(Into::into),
            KeySource::Path { segment, after, .. } => {
                from_path(uri, *segment, after.as_deref()).map(Into::into)
            }
        };
        if let Some(v) = found.as_deref().and_then(accept) {
            return Some(make(source.kind(), v));
        }
    }
    None
}

/// The first query parameter or cookie key source that the request gives
/// two different values (named as `query parameter NAME` or `cookie NAME`):
/// the router would route by one while the upstream might read the other.
/// (Header sources are checked with the request's other fields, by
/// `headers::check_request`.)
pub fn repeated(sources: &[KeySource], uri: &Uri, headers: &HeaderMap) -> Option<String> {
    for source in sources {
        match source {
            KeySource::Query { name, .. } => {
                let Some(q) = uri.query() else { continue };
                let values = q.split('&').filter_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k).as_deref() == Some(name.as_str())).then(|| decode(v))
                });
                if differ(values) {
                    return Some(format!("query parameter {name}"));
                }
            }
            KeySource::Cookie { name, .. } => {
                let values = headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|h| h.to_str().ok())
                    .flat_map(|h| h.split(';'))
                    .filter_map(|c| {
                        let (k, v) = c.split_once('=')?;
                        (k.trim() == name).then(|| Some(v.trim().trim_matches('"').to_string()))
                    });
                if differ(values) {
                    return Some(format!("cookie {name}"));
                }
            }
            KeySource::Header { .. } | KeySource::Path { .. } => {}
        }
    }
    None
}

/// True if `values` holds two that are not equal (an undecodable one
/// differs from every other).
fn differ(mut values: impl Iterator<Item = Option<String>>) -> bool {
    let Some(first) = values.next() else {
        return false;
    };
    values.any(|v| v.is_none() || v != first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sources() -> Vec<KeySource> {
        vec![
            KeySource::Header {
                name: "x-city-id".into(),
                kind: KeyKind::City,
            },
            KeySource::Header {
                name: "x-user-id".into(),
                kind: KeyKind::User,
            },
            KeySource::Query {
                name: "city".into(),
                kind: KeyKind::City,
            },
            KeySource::Cookie {
                name: "uid".into(),
                kind: KeyKind::User,
            },
            KeySource::Path {
                segment: None,
                after: Some("cities".into()),
                kind: KeyKind::City,
            },
        ]
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> (Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        (uri.parse().unwrap(), h)
    }

    #[test]
    fn a_query_or_cookie_key_with_two_values_is_named() {
        let none: &[(&str, &str)] = &[];
        for (uri, headers, expected) in [
            ("/o?city=010", none, None),
            ("/o?city=010&x=1&city=010", none, None),
            ("/o?city=010&city=021", none, Some("query parameter city")),
            ("/o?c%69ty=021&city=010", none, Some("query parameter city")),
            ("/o?city=010&city=%FF", none, Some("query parameter city")),
            ("/o?cityx=1&city=010", none, None),
            ("/o", &[("cookie", "uid=u1; a=b")][..], None),
            ("/o", &[("cookie", "uid=u1; uid=u1")][..], None),
            (
                "/o",
                &[("cookie", "uid=u1; uid=u2")][..],
                Some("cookie uid"),
            ),
            (
                "/o",
                &[("cookie", "uid=u1"), ("cookie", "uid=\"u2\"")][..],
                Some("cookie uid"),
            ),
        ] {
            let (u, h) = req(uri, headers);
            assert_eq!(
                repeated(&sources(), &u, &h).as_deref(),
                expected,
                "{uri} {headers:?}"
            );
        }
    }

    /// (uri, headers, expected key)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<Key>);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            ("/", &[("X-City-Id", "010")], Some(Key::City("010".into()))),
            ("/", &[("X-User-Id", "u1")], Some(Key::User("u1".into()))),
            // Order: the header wins over the query.
            (
                "/?city=021",
                &[("X-City-Id", "010")],
                Some(Key::City("010".into())),
            ),
            ("/o?x=1&city=021", &[], Some(Key::City("021".into()))),
            ("/o?city=%30%32%31", &[], Some(Key::City("021".into()))),
            (
                "/",
                &[("Cookie", "a=b; uid=u9; c=d")],
                Some(Key::User("u9".into())),
            ),
            (
                "/api/cities/0755/orders",
                &[],
                Some(Key::City("0755".into())),
            ),
            // Empty, blank and oversized values are absent.
            ("/", &[("X-City-Id", "   ")], None),
            ("/?city=", &[], None),
            ("/cities", &[], None),
            ("/", &[], None),
        ];
        let s = sources();
        for (uri, headers, want) in cases {
            let (u, h) = req(uri, headers);
            assert_eq!(&extract(&s, &u, &h), want, "{uri} {headers:?}");
        }
        let long = "9".repeat(MAX_KEY_LEN + 1);
        let (u, h) = req("/", &[("X-City-Id", &long)]);
        assert_eq!(extract(&s, &u, &h), None);
    }

    #[test]
    fn segment_index() {
        let s = [KeySource::Path {
            segment: Some(1),
            after: None,
            kind: KeyKind::User,
        }];
        let (u, h) = req("/users/alice/orders", &[]);
        assert_eq!(extract(&s, &u, &h), Some(Key::User("alice".into())));
    }

    proptest! {
        /// Whatever the path, query and header bytes, extraction does not
        /// panic and any key it returns is bounded and non-empty.
        #[test]
        fn never_panics(path in "(/[^ ?#]{0,12}){0,6}", query in "[ -~]{0,40}", hv in proptest::collection::vec(any::<u8>(), 0..200), cookie in "[ -~]{0,80}") {
            let uri = format!("{path}?{query}").replace(' ', "%20").replace('#', "%23");
            let Ok(uri) = uri.parse::<Uri>() else { return Ok(()) };
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(&hv) {
                h.insert("x-city-id", v.clone());
                h.insert("x-user-id", v);
            }
            if let Ok(v) = http::HeaderValue::from_str(&cookie) {
                h.insert(http::header::COOKIE, v);
            }
            if let Some(Key::City(k) | Key::User(k)) = extract(&sources(), &uri, &h) {
                prop_assert!(!k.is_empty() && k.len() <= MAX_KEY_LEN);
            }
        }
    }
}
