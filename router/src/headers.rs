//! Request and response header rules of a proxy, and ezone's own headers.
//!
//! - Hop-by-hop headers (RFC 9110 7.6.1, plus any named in `Connection`) are
//!   removed on the way through, except the `Upgrade` handshake, which is
//!   passed on so WebSockets work.
//! - `X-Ezone-Shard`, `X-Ezone-Epoch`, `X-Ezone-Site` are set by the router
//!   and any copies the client sent are removed: a client must not be able to
//!   claim a shard or an epoch.
//! - `X-Ezone-Hop` lists the sites whose routers already handled the request;
//!   a router that finds its own site there has found a loop (answered 508).
//! - `Via`, `X-Forwarded-For` and `X-Forwarded-Proto` are set as a proxy should.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_EZONE_SHARD: HeaderName = HeaderName::from_static("x-ezone-shard");
pub const X_EZONE_EPOCH: HeaderName = HeaderName::from_static("x-ezone-epoch");
pub const X_EZONE_SITE: HeaderName = HeaderName::from_static("x-ezone-site");
pub const X_EZONE_HOP: HeaderName = HeaderName::from_static("x-ezone-hop");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The most sites a request may pass through before it is refused as a loop
/// even if no site repeats (a topology with more sites than this is unusual).
pub const MAX_HOPS: usize = 8;

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether the request asks to switch protocols (`Connection: upgrade` plus
/// an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Connection: upgrade` and
/// `Upgrade` survive.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP.iter() {
        headers.remove(n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Removes every `X-Ezone-*` header a client could have sent, except the hop
/// list (which only matters for loop detection and is checked separately).
pub fn strip_ezone(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-ezone-") && **k != X_EZONE_HOP)
        .cloned()
        .collect();
    for k in ours {
        headers.remove(k);
    }
}

/// The request's hop list: each router that forwarded it, with the shard
/// epoch it decided at (`beijing@7`; a bare `beijing` from a router that
/// decided without a shard).
pub fn hop_entries(headers: &HeaderMap) -> Vec<(String, Option<u64>)> {
    headers
        .get_all(X_EZONE_HOP)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('@') {
            Some((site, epoch)) => (site.to_string(), epoch.parse().ok()),
            None => (s.to_string(), None),
        })
        .collect()
}

/// The sites already in the request's hop list.
pub fn hops(headers: &HeaderMap) -> Vec<String> {
    hop_entries(headers).into_iter().map(|(s, _)| s).collect()
}

/// True if forwarding again would loop: `site` already forwarded this
/// request and the topology has not moved on since (the last router decided
/// at an epoch no newer than the one `site` used), or it has passed too many
/// routers. A request that comes back at a newer epoch is not a loop: it
/// was held at the old home during a switchover and released to the new
/// one, which may be where it entered.
pub fn is_loop(headers: &HeaderMap, site: &str) -> bool {
    if !headers.contains_key(X_EZONE_HOP) {
        return false;
    }
    let h = hop_entries(headers);
    if h.len() >= MAX_HOPS {
        return true;
    }
    let latest = peer_decision(headers).map(|(_, e)| e);
    h.iter().any(|(s, mine)| {
        s == site
            && match (mine, latest) {
                (Some(mine), Some(latest)) => latest <= *mine,
                _ => true,
            }
    })
}

/// The shard and epoch a peer router decided on, when the request came from
/// one (it carries a hop list). Only a hint: a router that is behind that
/// epoch waits (bounded) for its own topology to catch up before deciding,
/// instead of sending the request back to a home the peer already knows has
/// changed. A client can forge it only to make its own request wait.
pub fn peer_decision(headers: &HeaderMap) -> Option<(u32, u64)> {
    if !headers.contains_key(X_EZONE_HOP) {
        return None;
    }
    let num = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let shard = u32::try_from(num(X_EZONE_SHARD)?).ok()?;
    Some((shard, num(X_EZONE_EPOCH)?))
}

/// Appends `site` (and the epoch it decided at) to the hop list.
pub fn add_hop(headers: &mut HeaderMap, site: &str, epoch: Option<u64>) {
    let mut h: Vec<String> = hop_entries(headers)
        .into_iter()
        .map(|(s, e)| match e {
            Some(e) => format!("{s}@{e}"),
            None => s,
        })
        .collect();
    h.push(match epoch {
        Some(e) => format!("{site}@{e}"),
        None => site.to_string(),
    });
    headers.remove(X_EZONE_HOP);
    if let Ok(v) = HeaderValue::from_str(&h.join(",")) {
        headers.insert(X_EZONE_HOP, v);
    }
}

/// Sets the headers that tell the upstream which shard, epoch and site the
/// router decided on.
pub fn set_ezone(headers: &mut HeaderMap, site: &str, shard: Option<(u32, u64)>) {
    if let Ok(v) = HeaderValue::from_str(site) {
        headers.insert(X_EZONE_SITE, v);
    }
    if let Some((id, epoch)) = shard {
        headers.insert(X_EZONE_SHARD, HeaderValue::from(id));
        headers.insert(X_EZONE_EPOCH, HeaderValue::from(epoch));
    }
}

/// Sets `Via`, `X-Forwarded-For` (appending the client address) and
/// `X-Forwarded-Proto` (kept if a peer router already set it).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: Option<IpAddr>,
    proto: &str,
    version: http::Version,
    from_peer: bool,
) {
    let v = match version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {v} ezone"),
        None => format!("{v} ezone"),
    };
    if let Ok(val) = HeaderValue::from_str(&via) {
        headers.insert(header::VIA, val);
    }
    if let Some(ip) = client {
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(val) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR, val);
        }
    }
    if !(from_peer && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coming_back_at_a_newer_epoch_is_not_a_loop() {
        // beijing forwarded at epoch 5; shanghai held it, then released it
        // to beijing at epoch 7: not a loop.
        let mut h = HeaderMap::new();
        add_hop(&mut h, "beijing", Some(5));
        h.insert(X_EZONE_EPOCH, HeaderValue::from_static("7"));
        h.insert(X_EZONE_SHARD, HeaderValue::from_static("1"));
        add_hop(&mut h, "shanghai", Some(7));
        assert_eq!(hops(&h), vec!["beijing", "shanghai"]);
        assert!(!is_loop(&h, "beijing"));
        // The same epoch back again: the topologies disagree, a loop.
        h.insert(X_EZONE_EPOCH, HeaderValue::from_static("5"));
        assert!(is_loop(&h, "beijing"));
        // No epoch at all: a loop, to be safe.
        h.remove(X_EZONE_EPOCH);
        assert!(is_loop(&h, "beijing"));
    }

    #[test]
    fn a_peer_decision_needs_a_hop_list_and_numbers() {
        let mut h = HeaderMap::new();
        h.insert(X_EZONE_SHARD, HeaderValue::from_static("3"));
        h.insert(X_EZONE_EPOCH, HeaderValue::from_static("9"));
        assert_eq!(peer_decision(&h), None, "a client alone is not a peer");
        h.insert(X_EZONE_HOP, HeaderValue::from_static("beijing"));
        assert_eq!(peer_decision(&h), Some((3, 9)));
        h.insert(X_EZONE_EPOCH, HeaderValue::from_static("nine"));
        assert_eq!(peer_decision(&h), None);
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn spoofed_ezone_headers_are_removed() {
        let mut h = map(&[
            ("X-Ezone-Shard", "99"),
            ("x-ezone-epoch", "12345"),
            ("X-Ezone-Site", "mars"),
            ("X-Ezone-Anything", "x"),
            ("X-Ezone-Hop", "shanghai"),
            ("X-Other", "keep"),
        ]);
        strip_ezone(&mut h);
        assert!(h.get("x-ezone-shard").is_none());
        assert!(h.get("x-ezone-epoch").is_none());
        assert!(h.get("x-ezone-site").is_none());
        assert!(h.get("x-ezone-anything").is_none());
        assert_eq!(h.get("x-ezone-hop").unwrap(), "shanghai");
        assert_eq!(h.get("x-other").unwrap(), "keep");
        set_ezone(&mut h, "beijing", Some((3, 7)));
        assert_eq!(h.get("x-ezone-shard").unwrap(), "3");
        assert_eq!(h.get("x-ezone-epoch").unwrap(), "7");
        assert_eq!(h.get("x-ezone-site").unwrap(), "beijing");
    }

    #[test]
    fn hop_by_hop_and_upgrade() {
        let mut h = map(&[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn loops_are_detected() {
        let mut h = HeaderMap::new();
        assert!(!is_loop(&h, "beijing"));
        add_hop(&mut h, "beijing", None);
        assert!(!is_loop(&h, "shanghai"));
        add_hop(&mut h, "shanghai", None);
        assert_eq!(h.get("x-ezone-hop").unwrap(), "beijing,shanghai");
        assert!(is_loop(&h, "beijing"));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[("X-Forwarded-For", "10.0.0.1")]);
        set_forwarded(
            &mut h,
            Some("127.0.0.2".parse().unwrap()),
            "https",
            http::Version::HTTP_2,
            false,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.2");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("via").unwrap(), "2 ezone");
    }
}
