//! The router's pure routing decision, timed: key extraction from a request
//! head plus the decision against a topology snapshot, with no I/O.
//!
//! This is the per-request work the router adds on top of proxying (the
//! rest, measured end to end against nginx, is `ezone bench router`). Two
//! cases, on the starter topology (two sites, two shards each), with the
//! default key sources (`X-City-Id`, then `X-User-Id`):
//!
//! - `city`: `X-City-Id: 010`, found by the first source, a table lookup;
//! - `user`: `X-User-Id: alice`, found by the second source after the first
//!   misses, then the user hash (FNV-1a + jump hash).
//!
//! Run: `cargo bench -p ezone-router --bench decide` (add `-- --quick` for a
//! short run). Numbers are for reading, never asserted.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ezone_router::policy::decide::{decide, Decision, FallbackAction, Policy};
use ezone_router::policy::extract::{extract, KeyKind, KeySource};
use ezone_topology::starter::starter;
use http::{HeaderMap, HeaderValue, Method, Uri};

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
    ]
}

/// A realistic request head: a few ordinary headers besides the key.
fn headers(key: &'static str, value: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::HOST,
        HeaderValue::from_static("orders.example"),
    );
    h.insert(http::header::USER_AGENT, HeaderValue::from_static("wrk"));
    h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(key, HeaderValue::from_static(value));
    h
}

fn route(c: &mut Criterion) {
    let topology = starter(&["beijing", "shanghai"], 2);
    let policy = Policy {
        site: "beijing".into(),
        on_missing_key: FallbackAction::DefaultSite,
        on_unknown_city: FallbackAction::Reject,
    };
    let sources = sources();
    let uri: Uri = "/orders/42?expand=items"
        .parse()
        .expect("a valid literal URI");
    let cases = [
        ("city", headers("x-city-id", "010")),
        ("user", headers("x-user-id", "alice")),
    ];

    let mut group = c.benchmark_group("extract+decide");
    for (name, head) in &cases {
        // Check once, outside the timing, that the case routes to a shard.
        let key = extract(&sources, &uri, head);
        let decision = decide(&topology, &policy, key.as_ref(), &Method::GET);
        assert!(
            matches!(
                decision,
                Decision::Local { shard: Some(_), .. } | Decision::Remote { shard: Some(_), .. }
            ),
            "{name}: {decision:?}"
        );
        group.bench_function(*name, |b| {
            b.iter(|| {
                let key = extract(&sources, black_box(&uri), black_box(head));
                decide(
                    black_box(&topology),
                    &policy,
                    key.as_ref(),
                    black_box(&Method::GET),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
