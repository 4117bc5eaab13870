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
//! - A forwarded request has exactly one `Host`: the request target's
//!   authority if it has one (absolute form, HTTP/2's `:authority`), else the
//!   client's, else (HTTP/1.0) an empty one; never an upstream's address.
//!   `Connection` cannot remove it, the routing key fields or ezone's own.
//! - [`check_request`] refuses what a request must not be forwarded with
//!   (see [`Refusal`]): the client's protocol errors, answered before any
//!   upstream is involved.
//!
//! A forwarded request's fields are written by one function,
//! [`forwarded_fields`], to either a header map (for hyper) or straight into
//! the encoded request head (the router's own HTTP/1 exchange), so both paths
//! follow the same rules.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri, Version};

pub const X_EZONE_SHARD: HeaderName = HeaderName::from_static("x-ezone-shard");
pub const X_EZONE_EPOCH: HeaderName = HeaderName::from_static("x-ezone-epoch");
pub const X_EZONE_SITE: HeaderName = HeaderName::from_static("x-ezone-site");
pub const X_EZONE_HOP: HeaderName = HeaderName::from_static("x-ezone-hop");
/// The routers' shared secret (`routing.peer_secret`), sent with the hop
/// list to a peer router: a request's hop information is believed only with
/// it, so a client cannot pose as a router.
pub const X_EZONE_PEER: HeaderName = HeaderName::from_static("x-ezone-peer");
/// A peer router's health check (with the hop list and the secret): the
/// router answers it itself, `200` if it has a topology. A client's copy is
/// dropped like any `X-Ezone-*` field.
pub const X_EZONE_PROBE: HeaderName = HeaderName::from_static("x-ezone-probe");
/// On an upstream's `503`: the database fence refused the write and nothing
/// of it was committed, so it may be sent again once the shard has moved
/// (see `proxy::write`).
pub const X_EZONE_FENCED: HeaderName = HeaderName::from_static("x-ezone-fenced");
/// Set by an upstream (the order service) on its answers: the site whose
/// database served the request.
pub const X_EZONE_SERVED_BY: HeaderName = HeaderName::from_static("x-ezone-served-by");
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

/// The fields named in `Connection` (hop-by-hop too), but `Upgrade` if
/// `keep_upgrade`, and never `Host`, ezone's own fields or `protected` (the
/// routing key fields): removing those would change where the request goes
/// or what the upstream is told about it. The connection options that name
/// no field (`keep-alive`, `close`) are skipped before a name is made. No
/// allocation unless there are some.
fn connection_named(
    headers: &HeaderMap,
    keep_upgrade: bool,
    protected: &[HeaderName],
) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| {
            let kept = *n == header::HOST
                || n.as_str().starts_with("x-ezone-")
                || protected.contains(n)
                || (keep_upgrade && *n == header::UPGRADE);
            !kept
        })
        .collect()
}

/// A request the router refuses as it arrives: the client's protocol error,
/// answered at once (never sent on, never counted against an upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// More than one `Host` field (RFC 9112 3.2).
    Hosts,
    /// No `Host` in an HTTP/1.1 request (RFC 9112 3.2), or neither
    /// `:authority` nor `Host` in an HTTP/2 one.
    NoHost,
    /// A `Host` (or authority) that is neither empty nor `host[:port]`.
    BadHost,
    /// HTTP/2's `:authority` and `Host` name different hosts (RFC 9113 8.3.1).
    HostMismatch,
    /// A `Transfer-Encoding` other than exactly `chunked` (RFC 9112 6.1:
    /// 501): the router does not decode other codings, and a list such as
    /// `identity, chunked` is read differently by different parsers.
    TransferCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 6.1: faulty
    /// framing).
    TransferCodingHttp10,
    /// `Transfer-Encoding` and `Content-Length` together (RFC 9112 6.1: the
    /// framings disagree, the way request smuggling starts). Only the
    /// router's own HTTP/1 server passes both on: hyper drops the length.
    TransferCodingAndLength,
    /// A routing key (a `[[keys]]` header field, or a query parameter or
    /// cookie with two different values) more than once, named here: the
    /// first would route the request while the upstream might read another.
    RepeatedKey(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The `reason` label of `ezone_router_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Hosts | Refusal::NoHost | Refusal::BadHost | Refusal::HostMismatch => {
                "bad_host"
            }
            Refusal::TransferCoding
            | Refusal::TransferCodingHttp10
            | Refusal::TransferCodingAndLength => "bad_transfer_encoding",
            Refusal::RepeatedKey(_) => "repeated_key",
        }
    }

    /// The body's framing is in doubt: the connection must not carry
    /// another request.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Refusal::TransferCoding
                | Refusal::TransferCodingHttp10
                | Refusal::TransferCodingAndLength
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Hosts => f.write_str("more than one Host field; send exactly one"),
            Refusal::NoHost => f.write_str(
                "no Host field (HTTP/1.1 requires one; HTTP/2 an :authority); send the host addressed",
            ),
            Refusal::BadHost => {
                f.write_str("Host is not a host[:port]; send the name or address of the host addressed")
            }
            Refusal::HostMismatch => f.write_str(
                ":authority and Host name different hosts; send one of them, or the same in both",
            ),
            Refusal::TransferCoding => f.write_str(
                "Transfer-Encoding other than `chunked` is not supported; send the body chunked (only), or with a Content-Length",
            ),
            Refusal::TransferCodingHttp10 => f.write_str(
                "Transfer-Encoding in an HTTP/1.0 request; send the body with a Content-Length, or use HTTP/1.1",
            ),
            Refusal::TransferCodingAndLength => f.write_str(
                "both Transfer-Encoding and Content-Length; send one of them",
            ),
            Refusal::RepeatedKey(name) => write!(
                f,
                "{name} (a routing key) appears more than once; send it once"
            ),
        }
    }
}

/// What a `Host` value (or an authority) may be: `host[:port]`, the host a
/// name, an IPv4 address or a bracketed IPv6 literal (RFC 3986's `host`
/// characters; no user information, path or whitespace), or empty (RFC 9112
/// 3.2: the target has no authority, as a router forwards an HTTP/1.0
/// request that named none).
fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// The client's protocol errors the router refuses a request for before it
/// looks any further (see [`Refusal`]): the `Host` rules (exactly one in
/// HTTP/1.1; in HTTP/2 an `:authority` or a `Host`, the same if both; in
/// HTTP/1.0 at most one), the transfer coding (`chunked` or none), and each
/// routing key field in `keys` at most once. A few map lookups: nothing is
/// allocated unless a request is refused.
pub fn check_request(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    keys: &[HeaderName],
) -> Result<(), Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::Hosts);
    }
    let authority = uri.authority();
    match version {
        Version::HTTP_09 | Version::HTTP_10 => {}
        Version::HTTP_2 | Version::HTTP_3 => match (authority, host) {
            (None, None) => return Err(Refusal::NoHost),
            (None, Some(h)) if h.is_empty() => return Err(Refusal::NoHost),
            (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                return Err(Refusal::HostMismatch)
            }
            _ => {}
        },
        _ => {
            if host.is_none() {
                return Err(Refusal::NoHost);
            }
        }
    }
    if host.is_some_and(|h| !valid_host(h.as_bytes()))
        || authority.is_some_and(|a| !valid_host(a.as_str().as_bytes()))
    {
        return Err(Refusal::BadHost);
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if matches!(version, Version::HTTP_09 | Version::HTTP_10) {
            return Err(Refusal::TransferCodingHttp10);
        }
        if codings.next().is_some() || !is_chunked(coding.as_bytes()) {
            return Err(Refusal::TransferCoding);
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(Refusal::TransferCodingAndLength);
        }
    }
    for key in keys {
        let mut values = headers.get_all(key).iter();
        if values.next().is_some() && values.next().is_some() {
            return Err(Refusal::RepeatedKey(key.to_string()));
        }
    }
    Ok(())
}

/// A `Transfer-Encoding` value that is exactly `chunked` (in any case).
pub fn is_chunked(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Connection: upgrade` and
/// `Upgrade` survive.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Usually there is none (an HTTP/1.1 upstream's answer): one pass over
    // the few names present costs less than a lookup per hop-by-hop name.
    if !keep_upgrade
        && !headers
            .keys()
            .any(|n| HOP_BY_HOP.contains(n) || *n == header::UPGRADE)
    {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named = connection_named(headers, keep_upgrade, &[]);
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

/// Whether the request's hop information (hop list, decided shard and
/// epoch, `X-Forwarded-Proto`) comes from a peer router: it has a hop list
/// and carries the routers' shared secret. Otherwise those fields are a
/// client's, and are dropped like any `X-Ezone-*` it sends. A router without
/// a secret believes no one: it has no way to tell a router from a client
/// (and it does not forward to other sites either; see `proxy`).
pub fn from_peer(headers: &HeaderMap, secret: Option<&HeaderValue>) -> bool {
    let Some(secret) = secret else {
        return false;
    };
    headers.contains_key(X_EZONE_HOP)
        && headers
            .get(X_EZONE_PEER)
            .is_some_and(|v| same_secret(v.as_bytes(), secret.as_bytes()))
}

/// Equal, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The site of the last entry of the request's hop list (the router that
/// sent it, if a router did), without its epoch. No allocation.
pub fn last_hop(headers: &HeaderMap) -> Option<&str> {
    let last = headers.get_all(X_EZONE_HOP).iter().next_back()?;
    let entry = last
        .to_str()
        .ok()?
        .rsplit(',')
        .map(str::trim)
        .find(|s| !s.is_empty())?;
    Some(entry.split_once('@').map_or(entry, |(site, _)| site))
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

/// The router's part of a forwarded request's head.
#[derive(Debug, Clone)]
pub struct Forwarding<'a> {
    /// `X-Ezone-Site`: the site the request goes to (skipped if it is not a
    /// valid header value).
    pub site: &'a str,
    /// The same, already a header value (the router keeps its own site's).
    pub site_value: Option<&'a HeaderValue>,
    /// `X-Ezone-Shard` and `X-Ezone-Epoch`: the shard it was routed by.
    pub shard: Option<(u32, u64)>,
    /// The client's address, for `X-Forwarded-For`.
    pub client: Option<&'a HeaderValue>,
    /// The client connection is TLS (`X-Forwarded-Proto`).
    pub tls: bool,
    /// To another site's router: this site, and the epoch it decided at,
    /// are appended to `X-Ezone-Hop`. `None`: to an upstream, which gets no
    /// hop list.
    pub hop: Option<(&'a str, Option<u64>)>,
    /// Keep the `Upgrade` handshake (`Connection: upgrade` and `Upgrade`).
    pub upgrade: bool,
    /// The request came from a peer router ([`from_peer`]): its hop list
    /// and `X-Forwarded-Proto` are kept.
    pub peer: bool,
    /// Sent with the hop list to a peer router (`X-Ezone-Peer`).
    pub peer_secret: Option<&'a HeaderValue>,
    /// The routing key fields: kept even if `Connection` names them.
    pub keys: &'a [HeaderName],
}

/// Where the header fields of a forwarded request go: a [`HeaderMap`] (for
/// hyper) or an encoded head (`http1::codec::HeadWriter`).
pub trait FieldSink {
    /// A field with a value as it is.
    fn field(&mut self, name: &HeaderName, value: &HeaderValue);
    /// A field whose value is `parts` joined; skipped unless that is a
    /// valid header value (as [`HeaderValue::from_bytes`] has it).
    fn field_concat(&mut self, name: &HeaderName, parts: &[&[u8]]);
}

impl FieldSink for HeaderMap {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.append(name.clone(), value.clone());
    }

    fn field_concat(&mut self, name: &HeaderName, parts: &[&[u8]]) {
        if let Ok(v) = HeaderValue::from_bytes(&parts.concat()) {
            self.append(name.clone(), v);
        }
    }
}

/// A number's decimal digits, without allocating.
pub(crate) fn digits(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The header fields of a request as the router forwards it, written to
/// `out`: the client's fields less the hop-by-hop ones (RFC 9110 7.6.1, and
/// any named in `Connection`; the `Upgrade` handshake kept if asked), less
/// every `X-Ezone-*` a client could have sent, then the router's own:
/// `X-Ezone-Site`/`-Shard`/`-Epoch`, `Via` and `X-Forwarded-For` appended to
/// (their first value), `X-Forwarded-Proto` (a peer router's kept), and the
/// hop list (appended to, towards a peer router; dropped towards an
/// upstream). `Connection` never removes `Host` or the routing key fields.
/// `Host` is the request target's authority when it has one (absolute form,
/// HTTP/2's `:authority`; RFC 9112 3.2.2, RFC 9113 8.3.1), else the
/// client's; a request with neither (HTTP/1.0) gets an empty one (RFC 9112
/// 3.2), so that the upstream's HTTP/1.1 sees exactly one and never an
/// address the router made up. (More than one was refused by
/// [`check_request`].)
pub fn forwarded_fields(
    parts: &http::request::Parts,
    fwd: &Forwarding<'_>,
    out: &mut impl FieldSink,
) {
    let headers = &parts.headers;
    let keep_proto = fwd.peer && headers.contains_key(&X_FORWARDED_PROTO);
    // Fields named in Connection are hop-by-hop too (rare: no allocation
    // unless there are some).
    let named = connection_named(headers, fwd.upgrade, fwd.keys);
    let authority = parts.uri.authority();
    match authority {
        Some(a) => out.field_concat(&header::HOST, &[a.as_str().as_bytes()]),
        None if !headers.contains_key(header::HOST) => {
            out.field(&header::HOST, &HeaderValue::from_static(""))
        }
        None => {}
    }
    // `Content-Length` goes on once: repeated equal values (all a request
    // that got this far can have: the servers refuse unequal ones) are one
    // length to hyper but a 400 to some upstreams (nginx).
    let mut length_written = false;
    for (name, value) in headers {
        let repeated_length =
            *name == header::CONTENT_LENGTH && std::mem::replace(&mut length_written, true);
        let skip = HOP_BY_HOP.contains(name)
            || repeated_length
            || (*name == header::UPGRADE && !fwd.upgrade)
            || (authority.is_some() && *name == header::HOST)
            || named.contains(name)
            || name.as_str().starts_with("x-ezone-")
            || *name == header::VIA
            || *name == X_FORWARDED_FOR
            || (*name == X_FORWARDED_PROTO && !keep_proto);
        if !skip {
            out.field(name, value);
        }
    }
    if fwd.upgrade {
        out.field(&header::CONNECTION, &HeaderValue::from_static("upgrade"));
    }
    match fwd.site_value {
        Some(v) => out.field(&X_EZONE_SITE, v),
        None => out.field_concat(&X_EZONE_SITE, &[fwd.site.as_bytes()]),
    }
    if let Some((id, epoch)) = fwd.shard {
        let mut buf = [0u8; 20];
        out.field_concat(&X_EZONE_SHARD, &[digits(u64::from(id), &mut buf)]);
        out.field_concat(&X_EZONE_EPOCH, &[digits(epoch, &mut buf)]);
    }
    let ours: &[u8] = match parts.version {
        http::Version::HTTP_2 => b"2 ezone",
        http::Version::HTTP_10 => b"1.0 ezone",
        _ => b"1.1 ezone",
    };
    match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => out.field_concat(&header::VIA, &[prev.as_bytes(), b", ", ours]),
        None => out.field_concat(&header::VIA, &[ours]),
    }
    if let Some(ip) = fwd.client {
        match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                out.field_concat(&X_FORWARDED_FOR, &[prev.as_bytes(), b", ", ip.as_bytes()])
            }
            None => out.field(&X_FORWARDED_FOR, ip),
        }
    }
    if !keep_proto {
        let proto = if fwd.tls { "https" } else { "http" };
        out.field(&X_FORWARDED_PROTO, &HeaderValue::from_static(proto));
    }
    if let Some((site, epoch)) = fwd.hop {
        let mut list = String::new();
        let before = if fwd.peer {
            hop_entries(headers)
        } else {
            Vec::new()
        };
        for (s, e) in before
            .into_iter()
            .chain(std::iter::once((site.to_string(), epoch)))
        {
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(&s);
            if let Some(e) = e {
                list.push('@');
                list.push_str(&e.to_string());
            }
        }
        out.field_concat(&X_EZONE_HOP, &[list.as_bytes()]);
        if let Some(secret) = fwd.peer_secret {
            out.field(&X_EZONE_PEER, secret);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request head with `pairs`, forwarded per `fwd`, as a header map.
    fn forward(pairs: &[(&str, &str)], version: http::Version, fwd: &Forwarding<'_>) -> HeaderMap {
        let mut req = http::Request::get("/").version(version);
        for (k, v) in pairs {
            req = req.header(*k, *v);
        }
        let (parts, ()) = req.body(()).expect("request").into_parts();
        let mut out = HeaderMap::new();
        forwarded_fields(&parts, fwd, &mut out);
        out
    }

    fn local<'a>(site: &'a str) -> Forwarding<'a> {
        Forwarding {
            site,
            site_value: None,
            shard: None,
            client: None,
            tls: false,
            hop: None,
            upgrade: false,
            peer: false,
            peer_secret: None,
            keys: &[],
        }
    }

    fn hop_list(h: &HeaderMap) -> String {
        h.get(X_EZONE_HOP)
            .map(|v| v.to_str().expect("ascii").to_string())
            .unwrap_or_default()
    }

    #[test]
    fn coming_back_at_a_newer_epoch_is_not_a_loop() {
        // beijing forwarded at epoch 5; shanghai held it, then released it
        // to beijing at epoch 7: not a loop.
        let fwd = Forwarding {
            hop: Some(("beijing", Some(5))),
            shard: Some((1, 5)),
            ..local("shanghai")
        };
        let h = forward(&[], http::Version::HTTP_11, &fwd);
        assert_eq!(hop_list(&h), "beijing@5");
        let fwd = Forwarding {
            hop: Some(("shanghai", Some(7))),
            shard: Some((1, 7)),
            peer: true,
            ..local("beijing")
        };
        let mut h = forward(
            &[
                ("x-ezone-hop", "beijing@5"),
                ("x-ezone-epoch", "7"),
                ("x-ezone-shard", "1"),
            ],
            http::Version::HTTP_11,
            &fwd,
        );
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
        let client = [
            ("X-Ezone-Shard", "99"),
            ("x-ezone-epoch", "12345"),
            ("X-Ezone-Site", "mars"),
            ("X-Ezone-Anything", "x"),
            ("X-Other", "keep"),
        ];
        let h = forward(&client, http::Version::HTTP_11, &local("beijing"));
        assert!(h.get("x-ezone-shard").is_none());
        assert!(h.get("x-ezone-epoch").is_none());
        assert!(h.get("x-ezone-anything").is_none());
        assert_eq!(h.get("x-ezone-site").unwrap(), "beijing");
        assert_eq!(h.get("x-other").unwrap(), "keep");
        let fwd = Forwarding {
            shard: Some((3, 7)),
            ..local("beijing")
        };
        let h = forward(&client, http::Version::HTTP_11, &fwd);
        assert_eq!(h.get_all("x-ezone-shard").iter().count(), 1);
        assert_eq!(h.get("x-ezone-shard").unwrap(), "3");
        assert_eq!(h.get("x-ezone-epoch").unwrap(), "7");
        assert_eq!(h.get("x-ezone-site").unwrap(), "beijing");
        // A client's hop list reaches no upstream.
        let h = forward(&[("X-Ezone-Hop", "shanghai")], http::Version::HTTP_11, &fwd);
        assert!(h.get("x-ezone-hop").is_none());
        // A site name that is not a header value is left out, not sent raw.
        let h = forward(&[], http::Version::HTTP_11, &local("bad\r\nname"));
        assert!(h.get("x-ezone-site").is_none());
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

        // The same rules for a forwarded request.
        let client = [
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "x"),
            ("Upgrade", "websocket"),
            ("Accept", "*/*"),
        ];
        let h = forward(&client, http::Version::HTTP_11, &local("beijing"));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "transfer-encoding",
            "te",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(h.get(gone).is_none(), "{gone}: {h:?}");
        }
        assert_eq!(h.get("accept").unwrap(), "*/*");
        let fwd = Forwarding {
            upgrade: true,
            ..local("beijing")
        };
        let h = forward(
            &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
            http::Version::HTTP_11,
            &fwd,
        );
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn loops_are_detected() {
        let h = HeaderMap::new();
        assert!(!is_loop(&h, "beijing"));
        let fwd = Forwarding {
            hop: Some(("beijing", None)),
            ..local("shanghai")
        };
        let h = forward(&[], http::Version::HTTP_11, &fwd);
        assert!(!is_loop(&h, "shanghai"));
        let fwd = Forwarding {
            hop: Some(("shanghai", None)),
            peer: true,
            ..local("beijing")
        };
        let h = forward(&[("x-ezone-hop", "beijing")], http::Version::HTTP_11, &fwd);
        assert_eq!(h.get("x-ezone-hop").unwrap(), "beijing,shanghai");
        assert!(is_loop(&h, "beijing"));
    }

    #[test]
    fn forwarded_headers() {
        let ip = HeaderValue::from_static("127.0.0.2");
        let fwd = Forwarding {
            client: Some(&ip),
            tls: true,
            ..local("beijing")
        };
        let h = forward(
            &[("X-Forwarded-For", "10.0.0.1")],
            http::Version::HTTP_2,
            &fwd,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.2");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("via").unwrap(), "2 ezone");
        let h = forward(
            &[("Via", "1.1 cdn"), ("X-Forwarded-Proto", "https")],
            http::Version::HTTP_11,
            &Forwarding {
                tls: false,
                ..fwd.clone()
            },
        );
        assert_eq!(h.get("via").unwrap(), "1.1 cdn, 1.1 ezone");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.2");
        assert_eq!(
            h.get("x-forwarded-proto").unwrap(),
            "http",
            "a client's is replaced"
        );
        // A peer router's is kept.
        let h = forward(
            &[("X-Forwarded-Proto", "https"), ("x-ezone-hop", "shanghai")],
            http::Version::HTTP_11,
            &Forwarding {
                tls: false,
                peer: true,
                ..fwd.clone()
            },
        );
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        // A client's with a hop list of its own is not.
        let h = forward(
            &[("X-Forwarded-Proto", "https"), ("x-ezone-hop", "shanghai")],
            http::Version::HTTP_11,
            &Forwarding { tls: false, ..fwd },
        );
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn the_last_hop_is_the_router_that_sent_it() {
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        assert_eq!(last_hop(&with(&[])), None);
        assert_eq!(
            last_hop(&with(&[("x-ezone-hop", "beijing")])),
            Some("beijing")
        );
        assert_eq!(
            last_hop(&with(&[("x-ezone-hop", "beijing@3, shanghai@4")])),
            Some("shanghai")
        );
        assert_eq!(
            last_hop(&with(&[
                ("x-ezone-hop", "beijing@3"),
                ("x-ezone-hop", "shanghai@4,")
            ])),
            Some("shanghai")
        );
        assert_eq!(last_hop(&with(&[("x-ezone-hop", " , ")])), None);
    }

    #[test]
    fn hop_information_is_believed_only_from_a_peer() {
        let secret = HeaderValue::from_static("s3cret-s3cret");
        let with = |pairs: &[(&str, &str)]| map(pairs);
        // Without a secret nobody is believed, whatever they send.
        assert!(!from_peer(&with(&[("x-ezone-hop", "beijing")]), None));
        assert!(!from_peer(&with(&[]), None));
        // A shared secret: the hop list must come with it.
        let forged = with(&[("x-ezone-hop", "beijing")]);
        assert!(!from_peer(&forged, Some(&secret)));
        let wrong = with(&[
            ("x-ezone-hop", "beijing"),
            ("x-ezone-peer", "s3cret-s3creT"),
        ]);
        assert!(!from_peer(&wrong, Some(&secret)));
        let short = with(&[("x-ezone-hop", "beijing"), ("x-ezone-peer", "s3cret")]);
        assert!(!from_peer(&short, Some(&secret)));
        let right = with(&[
            ("x-ezone-hop", "beijing"),
            ("x-ezone-peer", "s3cret-s3cret"),
        ]);
        assert!(from_peer(&right, Some(&secret)));

        // A client's hop list is not carried on, and the secret goes only
        // to a peer router, never to an upstream.
        let towards_peer = Forwarding {
            hop: Some(("shanghai", Some(4))),
            peer_secret: Some(&secret),
            ..local("beijing")
        };
        let h = forward(
            &[("x-ezone-hop", "mars@9"), ("x-ezone-peer", "guess")],
            http::Version::HTTP_11,
            &towards_peer,
        );
        assert_eq!(hop_list(&h), "shanghai@4");
        assert_eq!(h.get_all(X_EZONE_PEER).iter().count(), 1);
        assert_eq!(h.get(X_EZONE_PEER).unwrap(), "s3cret-s3cret");
        let towards_upstream = Forwarding {
            peer: true,
            peer_secret: Some(&secret),
            ..local("beijing")
        };
        let h = forward(&right_pairs(), http::Version::HTTP_11, &towards_upstream);
        assert!(h.get(X_EZONE_PEER).is_none());
        assert!(h.get(X_EZONE_HOP).is_none());
    }

    fn right_pairs() -> [(&'static str, &'static str); 2] {
        [
            ("x-ezone-hop", "beijing"),
            ("x-ezone-peer", "s3cret-s3cret"),
        ]
    }

    #[test]
    fn http2_authority_becomes_the_host() {
        let (parts, ()) = http::Request::get("https://orders.example/a")
            .version(http::Version::HTTP_2)
            .body(())
            .expect("request")
            .into_parts();
        let mut h = HeaderMap::new();
        forwarded_fields(&parts, &local("beijing"), &mut h);
        assert_eq!(h.get("host").unwrap(), "orders.example");
    }

    /// `check_request` on a request line and fields.
    fn check(
        version: http::Version,
        uri: &str,
        pairs: &[(&str, &str)],
        keys: &[HeaderName],
    ) -> Result<(), Refusal> {
        check_request(version, &uri.parse().expect("uri"), &map(pairs), keys)
    }

    #[test]
    fn a_repeated_content_length_goes_on_once() {
        let h = forward(
            &[
                ("Host", "x"),
                ("Content-Length", "0"),
                ("content-length", "0"),
            ],
            http::Version::HTTP_11,
            &local("beijing"),
        );
        assert_eq!(h.get_all(header::CONTENT_LENGTH).iter().count(), 1);
        assert_eq!(h[header::CONTENT_LENGTH], "0");
    }

    #[test]
    fn a_request_names_exactly_one_host() {
        use http::Version as V;
        let none: &[HeaderName] = &[];
        assert_eq!(
            check(V::HTTP_11, "/", &[("Host", "a.example")], none),
            Ok(())
        );
        assert_eq!(
            check(
                V::HTTP_11,
                "/",
                &[("Host", "a.example"), ("Host", "b.example")],
                none
            ),
            Err(Refusal::Hosts)
        );
        // The same twice is still two.
        assert_eq!(
            check(V::HTTP_11, "/", &[("Host", "a"), ("host", "a")], none),
            Err(Refusal::Hosts)
        );
        assert_eq!(check(V::HTTP_11, "/", &[], none), Err(Refusal::NoHost));
        // Absolute form still needs the field in HTTP/1.1.
        assert_eq!(
            check(V::HTTP_11, "http://a.example/", &[], none),
            Err(Refusal::NoHost)
        );
        // HTTP/1.0 may have none, not two.
        assert_eq!(check(V::HTTP_10, "/", &[], none), Ok(()));
        assert_eq!(
            check(V::HTTP_10, "/", &[("Host", "a"), ("Host", "b")], none),
            Err(Refusal::Hosts)
        );
        // HTTP/2: the :authority, or a Host, the same if both.
        assert_eq!(check(V::HTTP_2, "https://a.example/", &[], none), Ok(()));
        assert_eq!(
            check(V::HTTP_2, "/", &[("host", "a.example")], none),
            Ok(())
        );
        assert_eq!(check(V::HTTP_2, "/", &[], none), Err(Refusal::NoHost));
        assert_eq!(
            check(
                V::HTTP_2,
                "https://a.example/",
                &[("host", "A.example")],
                none
            ),
            Ok(())
        );
        assert_eq!(
            check(
                V::HTTP_2,
                "https://a.example/",
                &[("host", "b.example")],
                none
            ),
            Err(Refusal::HostMismatch)
        );
        // host[:port] only.
        for good in [
            "a.example",
            "a.example:8080",
            "10.0.0.1:80",
            "[::1]:443",
            "xn--d1a_b-c",
        ] {
            assert_eq!(
                check(V::HTTP_11, "/", &[("Host", good)], none),
                Ok(()),
                "{good}"
            );
        }
        // Empty: no authority (what a router sends for an HTTP/1.0 request
        // without one).
        assert_eq!(check(V::HTTP_11, "/", &[("Host", "")], none), Ok(()));
        assert_eq!(
            check(V::HTTP_2, "/", &[("host", "")], none),
            Err(Refusal::NoHost)
        );
        for bad in [
            "a b",
            "a/b",
            "user@a.example",
            "a\\b",
            "a?b",
            "a#b",
            "\"a\"",
        ] {
            assert_eq!(
                check(V::HTTP_11, "/", &[("Host", bad)], none),
                Err(Refusal::BadHost),
                "{bad:?}"
            );
        }
        assert_eq!(
            check(
                V::HTTP_11,
                "http://user@a.example/",
                &[("Host", "a.example")],
                none
            ),
            Err(Refusal::BadHost)
        );
    }

    #[test]
    fn only_chunked_is_a_transfer_coding() {
        use http::Version as V;
        let none: &[HeaderName] = &[];
        let with = |v: V, te: &[&str]| {
            let mut pairs = vec![("Host", "x")];
            pairs.extend(te.iter().map(|t| ("Transfer-Encoding", *t)));
            check(v, "/", &pairs, none)
        };
        assert_eq!(with(V::HTTP_11, &["chunked"]), Ok(()));
        assert_eq!(with(V::HTTP_11, &["Chunked"]), Ok(()));
        assert_eq!(with(V::HTTP_11, &[]), Ok(()));
        for te in [
            &["identity, chunked"][..],
            &["gzip, chunked"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["gzip"],
            &["identity"],
            &["chunked;q=1"],
            &[""],
        ] {
            let r = with(V::HTTP_11, te);
            assert_eq!(r, Err(Refusal::TransferCoding), "{te:?}");
            let r = r.expect_err("refused");
            assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
            assert!(r.closes());
        }
        let r = check(
            V::HTTP_11,
            "/",
            &[
                ("Host", "x"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "0"),
            ],
            none,
        )
        .expect_err("refused");
        assert_eq!(r, Refusal::TransferCodingAndLength);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.closes());
        let r = with(V::HTTP_10, &["chunked"]).expect_err("refused");
        assert_eq!(r, Refusal::TransferCodingHttp10);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.closes());
    }

    #[test]
    fn a_routing_key_appears_at_most_once() {
        use http::Version as V;
        let keys = [
            HeaderName::from_static("x-region"),
            HeaderName::from_static("x-user-id"),
        ];
        assert_eq!(
            check(
                V::HTTP_11,
                "/",
                &[("Host", "x"), ("X-Region", "010")],
                &keys
            ),
            Ok(())
        );
        let r = check(
            V::HTTP_11,
            "/",
            &[("Host", "x"), ("X-Region", "010"), ("x-region", "021")],
            &keys,
        )
        .expect_err("refused");
        assert_eq!(r, Refusal::RepeatedKey("x-region".into()));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!r.closes());
        assert!(r.to_string().contains("x-region"), "{r}");
        assert!(check(
            V::HTTP_11,
            "/",
            &[("Host", "x"), ("X-User-Id", "u1"), ("X-User-Id", "u2")],
            &keys
        )
        .is_err());
        // A field that is not a key may repeat.
        assert_eq!(
            check(
                V::HTTP_11,
                "/",
                &[("Host", "x"), ("X-City-Id", "1"), ("X-City-Id", "2")],
                &keys
            ),
            Ok(())
        );
    }

    #[test]
    fn connection_never_removes_the_host_or_the_routing_fields() {
        let keys = [HeaderName::from_static("x-city-id")];
        let fwd = Forwarding {
            shard: Some((1, 4)),
            keys: &keys,
            ..local("beijing")
        };
        let h = forward(
            &[
                ("Host", "orders.example"),
                ("X-City-Id", "010"),
                ("X-Other", "gone"),
                (
                    "Connection",
                    "keep-alive, Host, X-City-Id, X-Ezone-Shard, X-Ezone-Site, X-Other",
                ),
            ],
            http::Version::HTTP_11,
            &fwd,
        );
        assert_eq!(h.get("host").unwrap(), "orders.example");
        assert_eq!(h.get("x-city-id").unwrap(), "010");
        assert_eq!(h.get("x-ezone-shard").unwrap(), "1");
        assert_eq!(h.get("x-ezone-site").unwrap(), "beijing");
        assert!(h.get("x-other").is_none(), "{h:?}");
        assert!(h.get("connection").is_none(), "{h:?}");
    }

    #[test]
    fn the_forwarded_host_is_the_targets_or_the_clients_or_empty() {
        let forwarded = |uri: &str, version: http::Version, pairs: &[(&str, &str)]| {
            let mut req = http::Request::get(uri).version(version);
            for (k, v) in pairs {
                req = req.header(*k, *v);
            }
            let (parts, ()) = req.body(()).expect("request").into_parts();
            let mut h = HeaderMap::new();
            forwarded_fields(&parts, &local("beijing"), &mut h);
            h.get_all("host")
                .iter()
                .map(|v| v.to_str().expect("ascii").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            forwarded("/", http::Version::HTTP_11, &[("Host", "a.example")]),
            ["a.example"]
        );
        // Absolute form: the target's authority, not the field.
        assert_eq!(
            forwarded(
                "http://t.example/x",
                http::Version::HTTP_11,
                &[("Host", "a.example")]
            ),
            ["t.example"]
        );
        // HTTP/1.0 without one: an empty Host, never an address made up.
        assert_eq!(forwarded("/", http::Version::HTTP_10, &[]), [""]);
    }

    #[test]
    fn digits_are_decimal() {
        let mut buf = [0u8; 20];
        assert_eq!(digits(0, &mut buf), b"0");
        assert_eq!(digits(1234567890, &mut buf), b"1234567890");
        assert_eq!(digits(u64::MAX, &mut buf), b"18446744073709551615");
    }
}
