//! The routing phases: the key and the decision ([`Router::decide`]), the
//! hold of a frozen shard's write ([`Router::settle`]), and where a decision
//! sends a request ([`Router::target`]).
//!
//! A request is decided here once on the way in and, if it is a write the
//! fence refused, again once the topology has moved on (`write`): both take
//! the same steps.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Uri};

use ezone_topology::Snapshot;

use super::error::Kind;
use super::message::Target;
use super::router::{Failed, Router};
use crate::metrics::{ReasonLabels, SiteLabels};
use crate::policy::decide::{decide, Decision, Fallback};
use crate::policy::extract::extract;
use crate::policy::hold::Held;

impl Router {
    /// Extracts the key of a request and decides against `snap` where it
    /// goes (pure).
    pub(super) fn decide(
        &self,
        snap: &Snapshot,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Decision {
        let key = extract(&self.cfg.keys, uri, headers);
        decide(&snap.topology, &self.policy, key.as_ref(), method)
    }

    /// A decision to act on: any but `Hold` as it is; a write for a frozen
    /// shard held (counted, bounded by `deadline` and `limits.max_held`)
    /// until the topology releases it, then the decision that release
    /// makes, with the topology that made it (or a newer one).
    pub(super) async fn settle(
        &self,
        decision: Decision,
        snap: Arc<Snapshot>,
        deadline: Duration,
    ) -> Result<(Decision, Arc<Snapshot>), Failed> {
        let Decision::Hold { shard } = decision else {
            return Ok((decision, snap));
        };
        let held = self
            .holds
            .hold(
                shard.id,
                deadline,
                &self.policy,
                self.watcher.subscribe(),
                &self.metrics,
            )
            .await;
        match held {
            // Addresses from the topology that released it (or newer).
            Held::Released(d) => Ok((d, self.watcher.current().unwrap_or(snap))),
            held => Err(Failed::at(
                Kind::Held {
                    shard: shard.id,
                    overflow: held == Held::Overflow,
                    deadline,
                },
                Some(shard),
            )),
        }
    }

    /// Where a decision sends a request, or why it goes nowhere.
    // The failure is returned by value, as it was made: boxing it would
    // allocate on the refusal paths to save nothing on the hot one.
    #[allow(clippy::result_large_err)]
    pub(super) fn target(&self, decision: Decision, snap: Arc<Snapshot>) -> Result<Target, Failed> {
        let target = match decision {
            Decision::Reject {
                status,
                reason,
                fallback,
            } => {
                return Err(Failed::at(
                    Kind::Unroutable {
                        status,
                        reason,
                        fallback,
                    },
                    None,
                ))
            }
            // `settle` never leaves a Hold; be safe anyway.
            Decision::Hold { shard } => return Err(Failed::at(Kind::Frozen, Some(shard))),
            Decision::Local {
                site,
                shard,
                fallback,
            } => {
                self.count_fallback(fallback);
                Target {
                    site,
                    shard,
                    snap,
                    remote: false,
                }
            }
            Decision::Remote {
                site,
                router: _,
                shard,
                fallback,
            } => {
                // Without peer TLS or the shared secret the other site's
                // router could not tell this request from a client's (its
                // hop list would be dropped, and a disagreement would loop
                // unseen). The router refuses to start like this; a
                // topology that gains a site later ends here.
                if !self.knows_peers() {
                    return Err(Failed {
                        error: Kind::NoPeerTrust { site: site.clone() }.into(),
                        site: Some(site),
                        shard,
                    });
                }
                self.count_fallback(fallback);
                self.metrics
                    .cross_site
                    .get_or_create(&SiteLabels { site: site.clone() })
                    .inc();
                Target {
                    site,
                    shard,
                    snap,
                    remote: true,
                }
            }
        };
        if target.addrs().is_empty() {
            return Err(Failed {
                error: Kind::NoUpstreamsInTopology {
                    site: target.site.clone(),
                }
                .into(),
                site: Some(target.site),
                shard: target.shard,
            });
        }
        Ok(target)
    }

    fn count_fallback(&self, fallback: Option<Fallback>) {
        if let Some(f) = fallback {
            self.metrics
                .fallbacks
                .get_or_create(&ReasonLabels {
                    reason: f.as_str().into(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ezone_topology::starter::starter;
    use ezone_topology::{AnyStore, FileStore, ShardState, Watcher};
    use http::StatusCode;

    use crate::config::RouterConfig;
    use crate::policy::decide::ShardRef;
    use crate::proxy::error::Fault;

    /// A router of site beijing (`extra`: more of its config); its own
    /// topology never loads: the phases here are given one.
    fn router(extra: &str) -> Router {
        let cfg = RouterConfig::from_toml(&format!(
            "site = \"beijing\"\n[listen]\nhttp = \"127.0.0.1:0\"\nworkers = 1\n[topology]\nfile = \"/nonexistent/t.toml\"\n{extra}"
        ))
        .expect("a valid config");
        let watcher = Watcher::start(AnyStore::File(FileStore::new("/nonexistent/t.toml")));
        Router::new(cfg, watcher)
    }

    const TRUSTED: &str = "[routing]\npeer_secret = \"a-secret-of-the-routers\"\n";

    /// Two sites, two shards each: city 010 is shard 1 at beijing, 021
    /// shard 2 at shanghai.
    fn snap(edit: impl FnOnce(&mut ezone_topology::Topology)) -> Arc<Snapshot> {
        let mut t = starter(&["beijing", "shanghai"], 2);
        edit(&mut t);
        Arc::new(Snapshot {
            version: 1,
            topology: Arc::new(t),
        })
    }

    fn decided(r: &Router, snap: &Snapshot, method: Method, city: &str) -> Decision {
        let mut h = HeaderMap::new();
        h.insert("x-city-id", city.parse().expect("a valid value"));
        r.decide(snap, &method, &Uri::from_static("/orders"), &h)
    }

    #[tokio::test]
    async fn the_key_and_the_decision() {
        let r = router("");
        let s = snap(|t| t.shards.get_mut(&1).expect("shard 1").state = ShardState::Frozen);
        let epoch = s.topology.shards[&1].epoch;
        let shard = |id| Some(ShardRef { id, epoch });
        assert!(matches!(
            decided(&r, &s, Method::GET, "010"),
            Decision::Local { site, shard: sh, .. } if site == "beijing" && sh == shard(1)
        ));
        assert_eq!(
            decided(&r, &s, Method::POST, "010"),
            Decision::Hold {
                shard: ShardRef { id: 1, epoch }
            }
        );
        assert!(matches!(
            decided(&r, &s, Method::GET, "021"),
            Decision::Remote { site, shard: sh, .. } if site == "shanghai" && sh == shard(2)
        ));
        assert!(matches!(
            decided(&r, &s, Method::GET, "999"),
            Decision::Reject {
                status: StatusCode::NOT_FOUND,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn where_each_decision_goes() {
        let s = snap(|_| {});
        let shard = Some(ShardRef { id: 2, epoch: 1 });
        let remote = |site: &str| Decision::Remote {
            site: site.into(),
            router: format!("{site}.router:8080"),
            shard,
            fallback: None,
        };
        let t = router(TRUSTED)
            .target(remote("shanghai"), s.clone())
            .unwrap_or_else(|f| panic!("{:?}", f.error));
        assert!(t.remote);
        assert_eq!(&*t.addrs(), ["shanghai.router:8080".to_string()]);
        let local = Decision::Local {
            site: "beijing".into(),
            shard: None,
            fallback: None,
        };
        let t = router("")
            .target(local, s.clone())
            .unwrap_or_else(|f| panic!("{:?}", f.error));
        assert_eq!(
            (&*t.addrs(), t.remote),
            (&["beijing.app:9000".to_string()][..], false)
        );

        // Refused: what, and how far it got (the site, the shard).
        let failed = |r: &Router, d: Decision, s: Arc<Snapshot>| match r.target(d, s) {
            Ok(t) => panic!("sent to {}", t.site),
            Err(f) => (f.error.kind, f.error.whose_fault, f.site, f.shard),
        };
        assert_eq!(
            failed(&router(""), remote("shanghai"), s.clone()),
            (
                Kind::NoPeerTrust {
                    site: "shanghai".into()
                },
                Fault::Router,
                Some("shanghai".into()),
                shard
            )
        );
        let empty = snap(|t| {
            t.sites
                .get_mut("beijing")
                .expect("a site")
                .upstreams
                .clear()
        });
        assert_eq!(
            failed(
                &router(""),
                Decision::Local {
                    site: "beijing".into(),
                    shard,
                    fallback: None
                },
                empty
            ),
            (
                Kind::NoUpstreamsInTopology {
                    site: "beijing".into()
                },
                Fault::Router,
                Some("beijing".into()),
                shard
            )
        );
        let reject = Decision::Reject {
            status: StatusCode::BAD_REQUEST,
            reason: "no key".into(),
            fallback: Some(Fallback::MissingKey),
        };
        assert_eq!(
            failed(&router(""), reject, s.clone()),
            (
                Kind::Unroutable {
                    status: StatusCode::BAD_REQUEST,
                    reason: "no key".into(),
                    fallback: Some(Fallback::MissingKey)
                },
                Fault::Client,
                None,
                None
            )
        );
        let frozen = ShardRef { id: 1, epoch: 1 };
        assert_eq!(
            failed(&router(""), Decision::Hold { shard: frozen }, s),
            (Kind::Frozen, Fault::Router, None, Some(frozen))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_that_is_not_released_ends_at_its_deadline() {
        let r = router("");
        let s = snap(|_| {});
        let local = Decision::Local {
            site: "beijing".into(),
            shard: None,
            fallback: None,
        };
        let (d, _) = r
            .settle(local.clone(), s.clone(), Duration::from_secs(2))
            .await
            .unwrap_or_else(|f| panic!("{:?}", f.error));
        assert_eq!(d, local, "anything but a hold goes on as it is");
        // This router's topology never shows the shard released.
        let shard = ShardRef { id: 1, epoch: 1 };
        let Err(f) = r
            .settle(Decision::Hold { shard }, s, Duration::from_secs(2))
            .await
        else {
            panic!("released");
        };
        assert_eq!(
            f.error.kind,
            Kind::Held {
                shard: 1,
                overflow: false,
                deadline: Duration::from_secs(2)
            }
        );
        assert_eq!(f.shard, Some(shard));
    }
}
