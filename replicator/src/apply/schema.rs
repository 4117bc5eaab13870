//! The tables ezone keeps at each target (conflicts, applied markers),
//! ensured by every applier when it connects.

/// The advisory lock [`SCHEMA_SQL`] takes (a fixed key of ezone's own), so
/// that concurrent appliers ensure the schema one at a time.
pub const SCHEMA_LOCK: i64 = 7675238245213418866;

/// The DDL ezone keeps at each target: conflicts and applied markers.
///
/// `conflicts.op` is the incoming change's operation (`insert`, `update`,
/// `delete`: see [`crate::conflict::Op`]); `conflicts.shard` the row's shard, when
/// the table has a shard key (a switchover refuses to move a shard with
/// unresolved conflicts). Tables made by an older ezone lack them: they
/// are added here, where every applier ensures the schema, and their
/// existing rows keep a NULL op (repair then does what it did before the
/// column existed: see [`crate::repair::choose`]). The `ALTER` runs only
/// when the column is missing: even with `IF NOT EXISTS` it takes an
/// ACCESS EXCLUSIVE lock on the table before looking, so run at every
/// applier start it would wait behind (and then block) a repair or a
/// `conflicts list` reading the table. `IF NOT EXISTS` still covers two
/// appliers adding it at once.
///
/// The whole text runs as one transaction (a simple query of many
/// statements) that first takes the advisory lock [`SCHEMA_LOCK`]: `IF NOT
/// EXISTS` does not make two sessions creating the same object safe (both see it missing,
/// the second fails on the catalog's unique index, SQLSTATE 23505), and
/// every link into a site (one per other site) ensures the schema when it
/// starts, at once when the replicator starts.
pub const SCHEMA_SQL: &str = "
SELECT pg_advisory_xact_lock(7675238245213418866); -- SCHEMA_LOCK
CREATE SCHEMA IF NOT EXISTS ezone_replication;
CREATE TABLE IF NOT EXISTS ezone_replication.conflicts (
    id bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    link text NOT NULL,
    kind text NOT NULL,
    op text,
    relation text NOT NULL,
    source_commit_lsn pg_lsn NOT NULL,
    source_commit_time timestamptz NOT NULL,
    remote_row jsonb,
    local_row jsonb,
    reason text NOT NULL,
    resolution text NOT NULL,
    resolved boolean NOT NULL DEFAULT false
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'ezone_replication.conflicts'::regclass
                     AND attname = 'op' AND NOT attisdropped) THEN
        ALTER TABLE ezone_replication.conflicts ADD COLUMN IF NOT EXISTS op text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'ezone_replication.conflicts'::regclass
                     AND attname = 'shard' AND NOT attisdropped) THEN
        ALTER TABLE ezone_replication.conflicts ADD COLUMN IF NOT EXISTS shard integer;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS ezone_replication.markers (
    link text NOT NULL,
    prefix text NOT NULL,
    content bytea NOT NULL,
    source_lsn pg_lsn NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (link, source_lsn, prefix)
);
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_ensured_under_its_lock_first() {
        let first = SCHEMA_SQL
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        assert!(
            first.starts_with(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK});")),
            "{first}"
        );
        // No transaction control inside: the text must stay one transaction.
        for l in SCHEMA_SQL.lines().map(|l| l.trim().to_uppercase()) {
            assert!(
                !["BEGIN;", "COMMIT;", "START TRANSACTION;", "ROLLBACK;"].contains(&l.as_str()),
                "{l}"
            );
        }
    }
}
