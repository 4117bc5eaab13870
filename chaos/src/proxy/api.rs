//! The admin HTTP API's wire format, shared by the server ([`admin`]) and
//! the client ([`AdminClient`]): routes, request and error bodies, and the
//! percent-encoding of link names in paths.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/links` | | `[LinkStatus]` |
//! | POST | `/links` | `LinkSpec` | 201 `LinkStatus` |
//! | GET | `/links/NAME` | | `LinkStatus` |
//! | POST | `/links/NAME/toxics` | [`SetToxicsRequest`] | `LinkStatus` |
//! | POST | `/links/NAME/partition` | optional [`PartitionRequest`] (default both) | `LinkStatus` |
//! | POST | `/links/NAME/heal` | | `LinkStatus` |
//! | POST | `/links/NAME/reset` | | `LinkStatus` |
//!
//! Errors are `{"error": "..."}` ([`ErrorBody`]) with a 4xx (or 503 once the
//! proxy stopped); an unknown link is a 404 that lists the known ones.
//!
//! **Link names in paths are percent-encoded** (RFC 3986): names such as
//! `beijing->shanghai:postgres` carry characters that are not safe in a path,
//! and a `/` in a name must not split the path. The server decodes `%XX`
//! escapes in the NAME segment (UTF-8); `+` stays a plus. [`link_path`] builds
//! such paths; by hand, `curl -X POST
//! 'http://ADMIN/links/beijing-%3Eshanghai%3Apostgres/heal'`.
//!
//! [`admin`]: super::admin
//! [`AdminClient`]: super::AdminClient

use serde::{Deserialize, Serialize};

use super::config::{Direction, Toxics};

/// Which directions a request applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Directions {
    /// Client -> upstream only.
    Upstream,
    /// Upstream -> client only.
    Downstream,
    /// Both directions.
    #[default]
    Both,
}

impl Directions {
    /// The single directions this stands for.
    pub fn each(self) -> &'static [Direction] {
        match self {
            Directions::Upstream => &[Direction::Upstream],
            Directions::Downstream => &[Direction::Downstream],
            Directions::Both => &[Direction::Upstream, Direction::Downstream],
        }
    }
}

impl From<Direction> for Directions {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Upstream => Directions::Upstream,
            Direction::Downstream => Directions::Downstream,
        }
    }
}

/// Body of `POST /links/NAME/toxics`: replaces the toxics of the given
/// direction(s) (`direction` defaults to both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetToxicsRequest {
    #[serde(default)]
    pub direction: Directions,
    pub toxics: Toxics,
}

/// Optional body of `POST /links/NAME/partition` (`direction` defaults to both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartitionRequest {
    pub direction: Directions,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The path of a link, or of one of its actions (`"toxics"`, `"partition"`,
/// `"heal"`, `"reset"`) when `action` is given, with the name percent-encoded.
pub fn link_path(name: &str, action: Option<&str>) -> String {
    let mut path = format!("/links/{}", percent_encode(name));
    if let Some(action) = action {
        path.push('/');
        path.push_str(action);
    }
    path
}

/// Every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes every byte but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// Decodes `%XX` escapes; the result must be UTF-8. Stricter than the
/// `percent-encoding` crate, which passes a stray `%` through: a link name
/// with one is refused, saying what is wrong with the segment.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let stray = bytes.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if stray {
        return Err(format!(
            "{s:?} has a '%' not followed by two hex digits; encode '%' as %25"
        ));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip_through_paths() {
        let names = [
            "beijing->shanghai:postgres",
            "a/b c%d+e",
            "plain",
            "城市",
            "",
        ];
        for name in names {
            let encoded = percent_encode(name);
            assert!(!encoded.contains('/') && !encoded.contains('>') && !encoded.contains(':'));
            assert_eq!(percent_decode(&encoded).as_deref(), Ok(name));
        }
        assert_eq!(
            link_path("x->y:pg", Some("heal")),
            "/links/x-%3Ey%3Apg/heal"
        );
        assert_eq!(link_path("x", None), "/links/x");
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert!(percent_decode("a%2").is_err());
        assert!(percent_decode("a%zz").is_err());
        assert!(percent_decode("%FF").is_err());
        assert_eq!(percent_decode("a+b"), Ok("a+b".to_owned()));
        assert_eq!(percent_decode("x->y:pg"), Ok("x->y:pg".to_owned()));
    }

    #[test]
    fn request_bodies_parse_with_defaults() {
        let r: SetToxicsRequest =
            serde_json::from_str(r#"{"direction":"both","toxics":{"latency":"15ms"}}"#)
                .expect("valid body");
        assert_eq!(r.direction, Directions::Both);
        assert_eq!(r.toxics.latency, std::time::Duration::from_millis(15));
        let r: SetToxicsRequest = serde_json::from_str(r#"{"toxics":{}}"#).expect("valid body");
        assert_eq!(r.direction, Directions::Both);
        let p: PartitionRequest =
            serde_json::from_str(r#"{"direction":"upstream"}"#).expect("valid body");
        assert_eq!(p.direction.each(), &[Direction::Upstream]);
        assert!(serde_json::from_str::<PartitionRequest>(r#"{"direction":"sideways"}"#).is_err());
    }
}
