//! Links set up at the same moment against one Postgres: every link into a
//! site ensures the `ezone_replication` schema when it starts, and every
//! link out of a site ensures the publication, so with three sites two of
//! them race at each Postgres whenever the replicators start together. The
//! loser of such a race used to fail (23505 on the catalog's unique index,
//! "publication already exists") and stop its replicator.

mod common;

use common::{q, DB};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::apply::Applier;
use ezone_replicator::link::{ensure_source, LinkConfig};
use ezone_replicator::walsender::SourceConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appliers_starting_together_all_get_the_schema() {
    let pg = PgCluster::start("beijing").await.expect("pg");
    let dsn = pg.dsn(DB);
    let starts = (0..8).map(|i| {
        let dsn = dsn.clone();
        async move {
            Applier::connect(&dsn, &format!("s{i}->beijing"), &format!("ezone_from_s{i}")).await
        }
    });
    let results = futures::future::join_all(starts).await;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(a) => a.close().await,
            Err(e) => panic!("applier {i} failed to start: {e}"),
        }
    }
    assert_eq!(
        q(
            &pg,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'ezone_replication'"
        )
        .await,
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_out_of_one_source_starting_together_share_the_publication() {
    let pg = PgCluster::start("beijing").await.expect("pg");
    q(
        &pg,
        "CREATE TABLE orders (id bigint PRIMARY KEY, note text)",
    )
    .await;
    // Several rounds, a fresh publication each: the race is a matter of
    // timing, and one round may not lose it.
    for round in 0..4 {
        let cfg = |to: &str| {
            let source = SourceConfig::from_dsn(&pg.dsn(DB)).expect("source dsn");
            LinkConfig {
                name: format!("beijing->{to}"),
                source,
                source_dsn: pg.dsn(DB),
                target_dsn: pg.dsn(DB),
                publication: format!("ezone_pub_{round}"),
                slot: format!("ezone_to_{to}_{round}"),
                origin: format!("ezone_from_beijing_for_{to}_{round}"),
                apply_workers: ezone_replicator::config::defaults::APPLY_WORKERS,
                large_transaction_bytes:
                    ezone_replicator::config::defaults::LARGE_TRANSACTION_BYTES,
                streaming: None,
                tables: vec!["public.orders".into()],
            }
        };
        let configs: Vec<LinkConfig> = ["s1", "s2", "s3", "s4"].iter().map(|t| cfg(t)).collect();
        let results = futures::future::join_all(configs.iter().map(ensure_source)).await;
        for (c, r) in configs.iter().zip(results) {
            if let Err(e) = r {
                panic!("round {round}: {}: {e}", c.name);
            }
        }
        assert_eq!(
            q(
                &pg,
                &format!("SELECT count(*) FROM pg_publication WHERE pubname = 'ezone_pub_{round}'")
            )
            .await,
            "1"
        );
        assert_eq!(
            q(
                &pg,
                &format!(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'ezone_to_s%_{round}'"
                )
            )
            .await,
            "4"
        );
    }
}
