//! The database fence: each site's Postgres refuses writes for shards it
//! does not own, or that are frozen for a flip — whatever a (stale,
//! partitioned) router sends it. The router is not trusted alone.
//!
//! How:
//! - `ezone_fence.shards(shard, writable, epoch)`: `writable` is true only
//!   where this site is the shard's home and the shard is active. It is
//!   reconciled from the topology ([`reconcile`]), monotonically by epoch, so
//!   a stale topology can never reopen a fence.
//! - `ezone_fence.cities(city, shard)`: the routing table, so the fence maps
//!   a row's city to its shard as the router does.
//! - `ezone_fence.user_shards(pos, shard)`: the routing table's
//!   `user_shards` list, in order, so the fence maps a user id to its shard
//!   with the stable user hash (`ezone_topology::hash`), written in SQL:
//!   `ezone_fence.fnv1a64`, `ezone_fence.jump`, `ezone_fence.user_shard`.
//! - A `BEFORE INSERT OR UPDATE OR DELETE ... FOR EACH ROW` trigger on each
//!   application table ([`install_table_sql`]) reads the row's shard key,
//!   takes a `FOR SHARE` lock on the shard's fence row and raises SQLSTATE
//!   `EZ001` unless it is writable. Closing a fence is an UPDATE of that row,
//!   which waits for every in-flight write transaction holding the share lock:
//!   the cut is clean — after [`reconcile`] returns, no transaction can still
//!   commit a write for that shard at this site.
//! - Replicated applies run with `session_replication_role = replica`, under
//!   which ordinary triggers do not fire: the fence never blocks replication.
//!
//! What an application table needs: a shard key column holding the city id
//! (`kind = city`, mapped through the routing table), the user id (`kind =
//! user`, mapped through the user hash) or the shard id itself (`kind =
//! shard`).

use ezone_topology::{ShardState, Topology};

/// SQLSTATE raised for a write to a shard this site may not write.
pub const SQLSTATE_FENCED: &str = "EZ001";
/// SQLSTATE raised for a row whose key maps to no shard.
pub const SQLSTATE_UNMAPPED: &str = "EZ002";
/// SQLSTATE raised when the site's fence lease lapsed (see [`renew_lease`]).
pub const SQLSTATE_LEASE_LAPSED: &str = "EZ003";

/// The prefix of the transactional message the fence trigger emits once
/// per shard a transaction writes: `"{shard}:{epoch}"`, the epoch of the
/// site's fence row when the write passed it. The replicator judges the
/// change by it ([`crate::ownership`]).
pub const EPOCH_MESSAGE_PREFIX: &str = "ezone.epoch";

/// A shard and the epoch a transaction wrote it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStamp {
    pub shard: ezone_topology::ShardId,
    pub epoch: ezone_topology::Epoch,
}

impl EpochStamp {
    /// The stamp from an epoch message's content; `None` if it is not one.
    pub fn parse(content: &[u8]) -> Option<EpochStamp> {
        let text = std::str::from_utf8(content).ok()?;
        let (shard, epoch) = text.split_once(':')?;
        Some(EpochStamp {
            shard: shard.parse().ok()?,
            epoch: epoch.parse().ok()?,
        })
    }
}

/// The fence's schema and trigger function. Idempotent.
pub const SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS ezone_fence;
CREATE TABLE IF NOT EXISTS ezone_fence.shards (
    shard integer PRIMARY KEY,
    writable boolean NOT NULL,
    epoch bigint NOT NULL,
    home text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS ezone_fence.cities (
    city text PRIMARY KEY,
    shard integer NOT NULL
);
-- The routing table's user_shards list: the user hash picks a position.
CREATE TABLE IF NOT EXISTS ezone_fence.user_shards (
    pos integer PRIMARY KEY,
    shard integer NOT NULL
);
-- The stable user hash, exactly as topology/src/hash.rs defines it (the
-- fence must map a user id to the shard the routers do). Postgres has no
-- unsigned 64-bit type and raises on bigint overflow, so the 64-bit values
-- are carried as two 32-bit halves in bigints, with every intermediate
-- product kept below 2^63; the result is the u64's two's-complement bigint.
--
-- 64-bit FNV-1a over the UTF-8 bytes of v.
CREATE OR REPLACE FUNCTION ezone_fence.fnv1a64(v text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    b bytea := convert_to(v, 'UTF8');
    -- The offset basis 0xcbf29ce484222325.
    hi bigint := 3421674724;
    lo bigint := 2216829733;
    t bigint;
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        lo := lo # get_byte(b, i);
        -- h * 0x100000001b3 mod 2^64; the prime is 2^40 + 435.
        t := lo * 435;
        hi := (hi * 435 + (lo << 8) + (t >> 32)) & 4294967295;
        lo := t & 4294967295;
    END LOOP;
    -- hi * 2^32 + lo as a signed 64-bit value, without overflowing (hi's
    -- top bit is the sign).
    RETURN ((hi # 2147483648) - 2147483648) * 4294967296 + lo;
END
$$;
-- Lamping and Veach's jump consistent hash: a bucket in 0..buckets-1 for
-- key (a u64 as its two's-complement bigint).
CREATE OR REPLACE FUNCTION ezone_fence.jump(key bigint, buckets integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    hi bigint := (key >> 32) & 4294967295;
    lo bigint := key & 4294967295;
    b bigint := -1;
    j bigint := 0;
    m bigint;
    t bigint;
BEGIN
    WHILE j < buckets LOOP
        b := j;
        -- key * 2862933555777941757 + 1 mod 2^64. The multiplier is
        -- 666578662 * 2^32 + 2276503805, and 2276503805 = 34736 * 2^16 + 45309
        -- (split again: lo * 2276503805 could reach 2^64).
        m := lo * 34736;
        t := lo * 45309 + ((m & 65535) << 16) + 1;
        hi := ((t >> 32) + (m >> 16) + lo * 666578662
               + hi * 45309 + (((hi * 34736) & 65535) << 16)) & 4294967295;
        lo := t & 4294967295;
        -- In double precision, as the reference (and the Rust) does, then
        -- truncated toward zero: (b + 1) * (2^31 / ((key >> 33) + 1)).
        j := trunc((b + 1)::float8 * (2147483648::float8 / ((hi >> 1) + 1)::float8))::bigint;
    END LOOP;
    RETURN greatest(b, 0);
END
$$;
-- user_shards[jump(fnv1a64(v), len(user_shards))]; NULL (no shard) for a
-- NULL id or an empty list.
CREATE OR REPLACE FUNCTION ezone_fence.user_shard(v text) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    shards integer[];
BEGIN
    IF v IS NULL THEN
        RETURN NULL;
    END IF;
    -- In position order, as the list is; one read per row.
    SELECT array_agg(shard ORDER BY pos) INTO shards FROM ezone_fence.user_shards;
    IF shards IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN shards[ezone_fence.jump(ezone_fence.fnv1a64(v), cardinality(shards)) + 1];
END
$$;
CREATE OR REPLACE FUNCTION ezone_fence.shard_of(kind text, v text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE kind
        WHEN 'city' THEN (SELECT shard FROM ezone_fence.cities WHERE city = v)
        WHEN 'shard' THEN v::integer
        WHEN 'user' THEN ezone_fence.user_shard(v)
    END
$$;
-- The site's lease on its shards: writes pass only before valid_until (by
-- this database's clock). Renewed by the site's replicator after each quorum
-- read of the topology; no row means never granted (a new fence refuses
-- writes until its replicator has read the topology once).
CREATE TABLE IF NOT EXISTS ezone_fence.lease (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    valid_until timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL DEFAULT now(),
    renewed_by text NOT NULL DEFAULT ''
);
CREATE OR REPLACE FUNCTION ezone_fence.check_shard(s integer, col text, v text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
    e bigint;
    until timestamptz;
BEGIN
    IF s IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'EZ002',
            MESSAGE = format('ezone fence: %s = %L maps to no shard', col, v),
            HINT = 'map the key in the topology''s routing table (a city in cities; for user ids, a non-empty user_shards)';
    END IF;
    -- FOR SHARE: closing this shard's fence (an UPDATE of the row) waits for
    -- this transaction to end.
    SELECT writable, epoch INTO ok, e FROM ezone_fence.shards WHERE shard = s FOR SHARE;
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'EZ001',
            MESSAGE = format('ezone fence: shard %s is not writable at this site (not its home, or frozen for a move)', s),
            HINT = 'send the write through an ezone router: it routes to the shard''s home';
    END IF;
    -- The lease: a plain read (no lock), so renewing it never waits for
    -- writes nor makes them wait. clock_timestamp(), not now(): a long
    -- transaction is judged by when it writes, not when it began.
    SELECT valid_until INTO until FROM ezone_fence.lease;
    IF until IS NULL OR until <= clock_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = 'EZ003',
            MESSAGE = format('ezone fence: this site''s lease on its shards lapsed (valid until %s): its replicator has not renewed it from the topology', coalesce(until::text, 'never granted')),
            HINT = 'the site''s replicator renews it while it can read etcd''s quorum: check that it runs and reaches etcd';
    END IF;
    -- The epoch this transaction writes the shard under travels with it:
    -- one transactional message per shard and transaction (the setting is
    -- transaction-local, and undone with a rolled-back subtransaction, as
    -- the message is). The share lock held above keeps the row's epoch
    -- fixed until this transaction ends.
    IF current_setting('ezone_fence.stamped_' || s, true) IS DISTINCT FROM e::text THEN
        PERFORM pg_logical_emit_message(true, 'ezone.epoch', s || ':' || e);
        PERFORM set_config('ezone_fence.stamped_' || s, e::text, true);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION ezone_fence.check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text := TG_ARGV[0];
    kind text := TG_ARGV[1];
    v text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        v := to_jsonb(OLD) ->> col;
        PERFORM ezone_fence.check_shard(ezone_fence.shard_of(kind, v), col, v);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        v := to_jsonb(NEW) ->> col;
        PERFORM ezone_fence.check_shard(ezone_fence.shard_of(kind, v), col, v);
        RETURN NEW;
    END IF;
    RETURN OLD;
END
$$;
"#;

/// What a fenced table's shard key column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceKey {
    /// A city id, mapped through the routing table's cities.
    City,
    /// The shard id itself.
    Shard,
    /// A user id, mapped through the user hash over `user_shards`.
    User,
}

impl FenceKey {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceKey::City => "city",
            FenceKey::Shard => "shard",
            FenceKey::User => "user",
        }
    }
}

/// SQL that puts the fence trigger on `table` (`schema.table`), keyed by
/// `column`. Idempotent.
pub fn install_table_sql(table: &str, column: &str, key: FenceKey) -> String {
    let qualified = table
        .split('.')
        .map(crate::sql::quote_ident)
        .collect::<Vec<_>>()
        .join(".");
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    format!(
        "DROP TRIGGER IF EXISTS ezone_fence ON {qualified};\n\
         CREATE TRIGGER ezone_fence BEFORE INSERT OR UPDATE OR DELETE ON {qualified} \
         FOR EACH ROW EXECUTE FUNCTION ezone_fence.check({}, {});",
        lit(column),
        lit(key.as_str())
    )
}

/// One shard's fence state for a site, from the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFence {
    pub shard: u32,
    pub writable: bool,
    pub epoch: u64,
    pub home: String,
}

/// The fence rows for `site` (pure).
pub fn fences_for(t: &Topology, site: &str) -> Vec<ShardFence> {
    t.shards
        .values()
        .map(|s| ShardFence {
            shard: s.id,
            writable: s.home == site && s.state == ShardState::Active,
            epoch: s.epoch,
            home: s.home.clone(),
        })
        .collect()
}

/// Errors of the fence's database side.
#[derive(Debug, thiserror::Error)]
#[error("fence at {target}: {what}: {source}")]
pub struct FenceError {
    pub target: String,
    pub what: String,
    #[source]
    pub source: tokio_postgres::Error,
}

/// Installs the schema (idempotent).
pub async fn install_schema(
    client: &tokio_postgres::Client,
    target: &str,
) -> Result<(), FenceError> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(|source| FenceError {
            target: target.into(),
            what: "installing the ezone_fence schema".into(),
            source,
        })
}

/// The rows to write so that `current` matches `wanted`: only shards whose
/// fence differs, and only where the topology is at the same or a later
/// epoch than the row (monotonic: a stale topology never reopens a fence).
/// Pure; unchanged rows are left alone so that a reconcile does not lock
/// them (a lock on a fence row waits for that shard's in-flight writes).
pub fn fence_changes(current: &[ShardFence], wanted: &[ShardFence]) -> Vec<ShardFence> {
    let cur: std::collections::HashMap<u32, &ShardFence> =
        current.iter().map(|f| (f.shard, f)).collect();
    wanted
        .iter()
        .filter(|w| match cur.get(&w.shard) {
            None => true,
            Some(c) => {
                c.epoch <= w.epoch
                    && (c.writable, c.epoch, &c.home) != (w.writable, w.epoch, &w.home)
            }
        })
        .cloned()
        .collect()
}

/// The writes that bring `ezone_fence.user_shards` (`current`: position ->
/// shard) in line with the topology's `user_shards` list (pure): the
/// positions to delete (past the list's end), and the (position, shard)
/// rows to upsert (new or changed). Unchanged positions are left alone.
pub fn user_shard_changes(
    current: &std::collections::BTreeMap<i32, i32>,
    wanted: &[ezone_topology::ShardId],
) -> (Vec<i32>, Vec<(i32, i32)>) {
    let wanted: Vec<(i32, i32)> = wanted
        .iter()
        .enumerate()
        .map(|(pos, shard)| (pos as i32, *shard as i32))
        .collect();
    let delete = current
        .keys()
        .filter(|pos| usize::try_from(**pos).map_or(true, |p| p >= wanted.len()))
        .copied()
        .collect();
    let upsert = wanted
        .into_iter()
        .filter(|(pos, shard)| current.get(pos) != Some(shard))
        .collect();
    (delete, upsert)
}

/// Grants the site's fence its lease until `valid_until` (`None`: for
/// ever; a deployment with `fence_lease_ms = 0`). Only a part that has just
/// read the topology from etcd's quorum, and reconciled the fence with it,
/// may call this: that read is what the lease vouches for. Never blocks
/// behind writes (writers read the lease row without a lock).
pub async fn renew_lease(
    client: &tokio_postgres::Client,
    target: &str,
    valid_until: Option<std::time::SystemTime>,
    by: &str,
) -> Result<(), FenceError> {
    let until = match valid_until {
        Some(t) => {
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            format!("{}", ms as f64 / 1000.0)
        }
        None => "infinity".to_string(),
    };
    client
        .execute(
            "INSERT INTO ezone_fence.lease (one, valid_until, renewed_at, renewed_by) \
             VALUES (true, CASE WHEN $1 = 'infinity' THEN 'infinity'::timestamptz \
                                ELSE to_timestamp($1::float8) END, now(), $2) \
             ON CONFLICT (one) DO UPDATE SET valid_until = excluded.valid_until, \
             renewed_at = excluded.renewed_at, renewed_by = excluded.renewed_by",
            &[&until, &by],
        )
        .await
        .map(|_| ())
        .map_err(|source| FenceError {
            target: target.into(),
            what: "renewing the fence's lease".into(),
            source,
        })
}

/// The lease a topology's settings give a renewal made at `read_at`
/// (when the quorum read started): `None` for no lease.
pub fn lease_until(
    settings: &ezone_topology::Settings,
    read_at: std::time::SystemTime,
) -> Option<std::time::SystemTime> {
    (settings.fence_lease_ms > 0)
        .then(|| read_at + std::time::Duration::from_millis(settings.fence_lease_ms))
}

/// Brings `site`'s fence in line with the topology: the city table, the
/// user shard list, and every shard's writability at its epoch. Monotonic: a shard row is only
/// changed by a topology at the same or a later epoch. Returns the shards
/// whose fence closed. Closing waits for in-flight writes of that shard (see
/// the module docs); rows that do not change are not touched.
pub async fn reconcile(
    client: &mut tokio_postgres::Client,
    target: &str,
    t: &Topology,
    site: &str,
) -> Result<Vec<u32>, FenceError> {
    let err = |what: &str, source| FenceError {
        target: target.into(),
        what: what.into(),
        source,
    };
    let tx = client.transaction().await.map_err(|e| err("BEGIN", e))?;
    let cities: std::collections::BTreeMap<String, i32> = tx
        .query("SELECT city, shard FROM ezone_fence.cities", &[])
        .await
        .map_err(|e| err("reading the city map", e))?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1)))
        .collect();
    for (city, shard) in &cities {
        if t.routing.cities.get(city).map(|s| *s as i32) != Some(*shard) {
            tx.execute("DELETE FROM ezone_fence.cities WHERE city = $1", &[city])
                .await
                .map_err(|e| err("updating the city map", e))?;
        }
    }
    for (city, shard) in &t.routing.cities {
        if cities.get(city) != Some(&(*shard as i32)) {
            tx.execute(
                "INSERT INTO ezone_fence.cities (city, shard) VALUES ($1, $2) \
                 ON CONFLICT (city) DO UPDATE SET shard = excluded.shard",
                &[city, &(*shard as i32)],
            )
            .await
            .map_err(|e| err("writing the city map", e))?;
        }
    }
    let positions: std::collections::BTreeMap<i32, i32> = tx
        .query("SELECT pos, shard FROM ezone_fence.user_shards", &[])
        .await
        .map_err(|e| err("reading the user shard list", e))?
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
        .collect();
    let (delete, upsert) = user_shard_changes(&positions, &t.routing.user_shards);
    for pos in &delete {
        tx.execute("DELETE FROM ezone_fence.user_shards WHERE pos = $1", &[pos])
            .await
            .map_err(|e| err("updating the user shard list", e))?;
    }
    for (pos, shard) in &upsert {
        tx.execute(
            "INSERT INTO ezone_fence.user_shards (pos, shard) VALUES ($1, $2) \
             ON CONFLICT (pos) DO UPDATE SET shard = excluded.shard",
            &[pos, shard],
        )
        .await
        .map_err(|e| err("writing the user shard list", e))?;
    }
    let current: Vec<ShardFence> = tx
        .query(
            "SELECT shard, writable, epoch, home FROM ezone_fence.shards",
            &[],
        )
        .await
        .map_err(|e| err("reading the shard fences", e))?
        .iter()
        .map(|r| ShardFence {
            shard: r.get::<_, i32>(0) as u32,
            writable: r.get(1),
            epoch: r.get::<_, i64>(2) as u64,
            home: r.get(3),
        })
        .collect();
    let mut closed = Vec::new();
    for f in fence_changes(&current, &fences_for(t, site)) {
        let row = tx
            .query_opt(
                "INSERT INTO ezone_fence.shards AS s (shard, writable, epoch, home) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (shard) DO UPDATE SET writable = excluded.writable, epoch = excluded.epoch, \
                 home = excluded.home, updated_at = now() \
                 WHERE s.epoch <= excluded.epoch \
                 RETURNING (SELECT writable FROM ezone_fence.shards WHERE shard = $1)",
                &[&(f.shard as i32), &f.writable, &(f.epoch as i64), &f.home],
            )
            .await
            .map_err(|e| err("writing a shard's fence", e))?;
        if let Some(r) = row {
            let was: Option<bool> = r.get(0);
            if was == Some(true) && !f.writable {
                closed.push(f.shard);
            }
        }
    }
    tx.commit().await.map_err(|e| err("COMMIT", e))?;
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ezone_topology::starter::starter;

    #[test]
    fn writable_only_at_the_home_when_active() {
        let mut t = starter(&["beijing", "shanghai"], 1);
        t.shards.get_mut(&2).unwrap().state = ShardState::Frozen;
        let f = fences_for(&t, "beijing");
        assert!(f[0].writable && !f[1].writable);
        let f = fences_for(&t, "shanghai");
        assert!(!f[0].writable && !f[1].writable, "frozen: writable nowhere");
    }

    #[test]
    fn only_changed_rows_and_never_backwards() {
        let f = |shard, writable, epoch, home: &str| ShardFence {
            shard,
            writable,
            epoch,
            home: home.into(),
        };
        let current = vec![f(1, true, 3, "a"), f(2, false, 5, "b"), f(3, true, 2, "a")];
        let wanted = vec![
            f(1, true, 3, "a"),  // same: untouched
            f(2, true, 4, "a"),  // older topology: never reopens
            f(3, false, 3, "a"), // newer: closes
            f(4, true, 1, "a"),  // new row
        ];
        let got: Vec<u32> = fence_changes(&current, &wanted)
            .iter()
            .map(|f| f.shard)
            .collect();
        assert_eq!(got, vec![3, 4]);
    }

    #[test]
    fn epoch_stamps_parse_only_their_own_form() {
        assert_eq!(
            EpochStamp::parse(b"3:17"),
            Some(EpochStamp {
                shard: 3,
                epoch: 17
            })
        );
        for bad in [
            &b""[..],
            b"3",
            b"3:",
            b":4",
            b"x:4",
            b"3:-1",
            b"3:4:5",
            b"\xff:1",
        ] {
            assert_eq!(EpochStamp::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn user_shard_list_writes_only_what_changed() {
        let current: std::collections::BTreeMap<i32, i32> =
            [(0, 1), (1, 2), (2, 3), (3, 9)].into_iter().collect();
        // Same at 0 and 2, changed at 1, gone at 3.
        let (delete, upsert) = user_shard_changes(&current, &[1, 5, 3]);
        assert_eq!(delete, vec![3]);
        assert_eq!(upsert, vec![(1, 5)]);
        // Grown: only the new positions.
        let (delete, upsert) = user_shard_changes(&current, &[1, 2, 3, 9, 4, 6]);
        assert!(delete.is_empty());
        assert_eq!(upsert, vec![(4, 4), (5, 6)]);
        // Emptied, or a stray negative position: deleted.
        let stray: std::collections::BTreeMap<i32, i32> = [(-1, 1), (0, 1)].into_iter().collect();
        assert_eq!(user_shard_changes(&stray, &[]), (vec![-1, 0], vec![]));
        assert_eq!(user_shard_changes(&stray, &[1]), (vec![-1], vec![]));
    }

    #[test]
    fn install_sql_user_key() {
        let sql = install_table_sql("app.profiles", "user_id", FenceKey::User);
        assert!(sql.contains("DROP TRIGGER IF EXISTS ezone_fence ON \"app\".\"profiles\";"));
        assert!(
            sql.contains("BEFORE INSERT OR UPDATE OR DELETE ON \"app\".\"profiles\" FOR EACH ROW")
        );
        assert!(sql.contains("EXECUTE FUNCTION ezone_fence.check('user_id', 'user');"));
        // The trigger's kind is one the schema's shard_of maps.
        assert!(SCHEMA_SQL.contains("WHEN 'user' THEN ezone_fence.user_shard(v)"));
    }

    #[test]
    fn install_sql_quotes() {
        let sql = install_table_sql("public.orders", "ci'ty", FenceKey::City);
        assert!(sql.contains("ON \"public\".\"orders\""));
        assert!(sql.contains("check('ci''ty', 'city')"));
    }
}
