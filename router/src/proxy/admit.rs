//! The request path's first phases, from the head alone: nothing is waited
//! for and no upstream is looked at. Pure: a head, the connection's facts
//! and the topology in, a verdict out.
//!
//! 1. [`check`]: the client's protocol errors ([`headers::check_request`],
//!    a routing key sent twice), before anything else is looked at;
//! 2. (the topology: none loaded yet is an answer of its own);
//! 3. [`admit`]: the limits that need no upstream, which requests are a peer
//!    router's (the peer listener takes only those), a peer's health probe,
//!    the loop check, and a peer's decision at an epoch this router has not
//!    seen yet.

use http::{HeaderName, Request};

use ezone_topology::Snapshot;

use super::error::{Kind, ProxyError};
use super::router::ConnInfo;
use crate::config::Limits;
use crate::policy::extract::{self, KeySource};
use crate::policy::headers::{self, Refusal};

/// What the first phases read of the router's configuration.
pub(super) struct Gate<'a> {
    /// The `[[keys]]` sources.
    pub keys: &'a [KeySource],
    /// The routing key fields (the `[[keys]]` header sources).
    pub key_headers: &'a [HeaderName],
    pub limits: &'a Limits,
    /// This router's site.
    pub site: &'a str,
}

/// What a request admitted is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Routing: on to the key and the decision.
    Route,
    /// A peer router's health probe: this router answers it itself.
    Probe,
    /// A peer router decided it at `epoch` of `shard`, which this router's
    /// topology has not reached: wait for it before deciding.
    CatchUp { shard: u32, epoch: u64 },
}

/// The client's protocol errors, refused first: nothing else is looked at.
pub(super) fn check<B>(gate: &Gate<'_>, req: &Request<B>) -> Result<(), ProxyError> {
    headers::check_request(req.version(), req.uri(), req.headers(), gate.key_headers)
        .map_err(Kind::Protocol)?;
    if let Some(what) = extract::repeated(gate.keys, req.uri(), req.headers()) {
        return Err(Kind::Protocol(Refusal::RepeatedKey(what)).into());
    }
    Ok(())
}

/// The limits and the trust checks of a request that passed [`check`]:
/// `peer` if its hop information comes from a peer router (see
/// `Router::is_from_peer`), `snap` the topology it is decided on.
pub(super) fn admit<B>(
    gate: &Gate<'_>,
    req: &Request<B>,
    conn: &ConnInfo,
    peer: bool,
    snap: &Snapshot,
) -> Result<Admitted, ProxyError> {
    // Limits that need no upstream. hyper enforces the header count and a
    // buffer of at least 8 KiB; the configured head size is checked here.
    let head_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if head_bytes > gate.limits.max_header_bytes {
        return Err(Kind::HeadTooLarge {
            bytes: head_bytes,
            limit: gate.limits.max_header_bytes,
        }
        .into());
    }
    if super::message::content_length(req.headers()).is_some_and(|n| n > gate.limits.max_body_bytes)
    {
        return Err(Kind::BodyTooLarge {
            limit: gate.limits.max_body_bytes,
        }
        .into());
    }
    // The peer listener is for routers' forwarded requests and probes only:
    // one whose hop list does not end with the site the client certificate
    // names is not one (and is not served as a client's, which could send
    // it back and forth unseen).
    if let (Some(site), false) = (&conn.peer_site, peer) {
        tracing::warn!(peer = ?conn.peer, from_site = &**site, hops = ?headers::hops(req.headers()), "A request on the peer listener without a hop list ending with its certificate's site; refused.");
        return Err(Kind::PeerHopMismatch { site: site.clone() }.into());
    }
    if !peer {
        return Ok(Admitted::Route);
    }
    // A peer router's health check (`server::health`): this router is up
    // and has a topology. Answered here, never forwarded.
    if req.headers().contains_key(headers::X_EZONE_PROBE) {
        return Ok(Admitted::Probe);
    }
    if headers::is_loop(req.headers(), gate.site) {
        return Err(Kind::Loop {
            site: gate.site.to_string(),
            hops: headers::hops(req.headers()).join(","),
        }
        .into());
    }
    // A peer router forwarded this at an epoch we have not seen yet: our
    // topology is a watch round trip behind. Wait for it rather than send
    // the request back (which the peer would answer 508).
    if let Some((shard, epoch)) = headers::peer_decision(req.headers()) {
        if snap
            .topology
            .shards
            .get(&shard)
            .is_some_and(|s| s.epoch < epoch)
        {
            return Ok(Admitted::CatchUp { shard, epoch });
        }
    }
    Ok(Admitted::Route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use ezone_topology::starter::starter;
    use http::header;

    use crate::config::RouterConfig;
    use crate::policy::extract::KeyKind;

    fn limits() -> Limits {
        RouterConfig::from_toml(
            "site = \"beijing\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[topology]\nfile = \"t.toml\"\n[limits]\nmax_header_bytes = 1024\nmax_body_bytes = 100\n",
        )
        .expect("a valid config")
        .limits
    }

    fn keys() -> Vec<KeySource> {
        vec![KeySource::Header {
            name: "x-city-id".into(),
            kind: KeyKind::City,
        }]
    }

    fn snap() -> Snapshot {
        Snapshot {
            version: 3,
            topology: Arc::new(starter(&["beijing", "shanghai"], 2)),
        }
    }

    fn request(fields: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/orders/1").header(header::HOST, "orders.example");
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).expect("a valid request")
    }

    /// What the phases make of a request: `Ok` the admission, `Err` the
    /// kind of the refusal.
    fn verdict(req: &Request<()>, conn: &ConnInfo, peer: bool) -> Result<Admitted, Kind> {
        let limits = limits();
        let keys = keys();
        let key_headers = [HeaderName::from_static("x-city-id")];
        let gate = Gate {
            keys: &keys,
            key_headers: &key_headers,
            limits: &limits,
            site: "beijing",
        };
        check(&gate, req)
            .and_then(|()| admit(&gate, req, conn, peer, &snap()))
            .map_err(|e| e.kind)
    }

    #[test]
    fn each_early_verdict_in_its_order() {
        let client = ConnInfo::new(None, false);
        let from_shanghai = ConnInfo::from_peer_router(None, "shanghai".into());
        let epoch = snap().topology.shards[&1].epoch;
        let ahead = (epoch + 1).to_string();
        let long = "x".repeat(1100);
        // What, the request, its connection, whether it is a peer's, the verdict.
        type Case<'a> = (
            &'a str,
            Request<()>,
            &'a ConnInfo,
            bool,
            Result<Admitted, Kind>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "an ordinary request",
                request(&[("x-city-id", "010")]),
                &client,
                false,
                Ok(Admitted::Route),
            ),
            (
                "a key field twice",
                request(&[("x-city-id", "010"), ("x-city-id", "021")]),
                &client,
                false,
                Err(Kind::Protocol(Refusal::RepeatedKey("x-city-id".into()))),
            ),
            (
                "a protocol error comes before a limit",
                request(&[("host", "b"), ("x-long", &long)]),
                &client,
                false,
                Err(Kind::Protocol(Refusal::Hosts)),
            ),
            (
                "a head over the limit",
                request(&[("x-long", &long)]),
                &client,
                false,
                Err(Kind::HeadTooLarge {
                    // x-long, host, and the path.
                    bytes: (6 + 1100 + 4) + (4 + 14 + 4) + 9,
                    limit: 1024,
                }),
            ),
            (
                "a declared body over the limit",
                request(&[("content-length", "101")]),
                &client,
                false,
                Err(Kind::BodyTooLarge { limit: 100 }),
            ),
            (
                "a client's probe is routed like any request",
                request(&[("x-ezone-probe", "1")]),
                &client,
                false,
                Ok(Admitted::Route),
            ),
            (
                "a peer's probe",
                request(&[("x-ezone-probe", "1"), ("x-ezone-hop", "shanghai")]),
                &client,
                true,
                Ok(Admitted::Probe),
            ),
            (
                "the peer listener without the certificate's site last",
                request(&[("x-ezone-hop", "guangzhou")]),
                &from_shanghai,
                false,
                Err(Kind::PeerHopMismatch {
                    site: "shanghai".into(),
                }),
            ),
            (
                "a peer's request that passed here before",
                request(&[("x-ezone-hop", "beijing,shanghai")]),
                &client,
                true,
                Err(Kind::Loop {
                    site: "beijing".into(),
                    hops: "beijing,shanghai".into(),
                }),
            ),
            (
                "a peer's decision at a newer epoch",
                request(&[
                    ("x-ezone-hop", "shanghai"),
                    ("x-ezone-shard", "1"),
                    ("x-ezone-epoch", &ahead),
                ]),
                &client,
                true,
                Ok(Admitted::CatchUp {
                    shard: 1,
                    epoch: epoch + 1,
                }),
            ),
            (
                "a client's claim of a newer epoch is not believed",
                request(&[
                    ("x-ezone-hop", "shanghai"),
                    ("x-ezone-shard", "1"),
                    ("x-ezone-epoch", &ahead),
                ]),
                &client,
                false,
                Ok(Admitted::Route),
            ),
        ];
        for (what, req, conn, peer, want) in cases {
            assert_eq!(verdict(&req, conn, peer), want, "{what}");
        }
    }
}
