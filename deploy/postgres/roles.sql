-- The roles and the database of one site's Postgres (docs/operations.md,
-- "Postgres roles"). Run once per site, as the postgres superuser, before
-- `ezone orders install`:
--
--   sudo -u postgres psql -v ON_ERROR_STOP=1 < roles.sql
--   sudo -u postgres psql -c '\password ezone'
--   sudo -u postgres psql -c '\password ezone_orders'
--
-- No password is set here: \password asks for it and sends only its SCRAM
-- hash. Every site gets the same roles; the passwords may differ per site
-- (each host's password files have a line per site).

-- The replicators (every site's, for links out of and into this site), the
-- switchover's site operations and the operators' commands, through the
-- topology's DSN (user=ezone). REPLICATION: logical slots and streaming.
CREATE ROLE ezone LOGIN REPLICATION;
-- The order service of this site: DML on its table, granted after the
-- install (grants.sql).
CREATE ROLE ezone_orders LOGIN;

-- ezone owns the database, so it may create its schemas (ezone_replication,
-- ezone_fence) and, through `ezone orders install`, public.orders: as the
-- owner of that table it may create the publication for it, seed it with
-- COPY and apply every change to it.
CREATE DATABASE ezone OWNER ezone;

-- Applies run with session_replication_role = replica (the fence trigger
-- and other ordinary triggers do not fire for replayed rows).
GRANT SET ON PARAMETER session_replication_role TO ezone;

\connect ezone
-- Exactly-once apply: the link's replication origin (ezone_from_<source>)
-- is created, taken for the session and advanced in each apply transaction;
-- its progress is where a link resumes. A switchover's catch-up watches it
-- in pg_replication_origin_status, and a forced failover records its
-- divergence point from there.
GRANT EXECUTE ON FUNCTION
    pg_catalog.pg_replication_origin_create(text),
    pg_catalog.pg_replication_origin_session_setup(text),
    pg_catalog.pg_replication_origin_session_reset(),
    pg_catalog.pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone),
    pg_catalog.pg_replication_origin_progress(text, boolean)
    TO ezone;
GRANT SELECT ON pg_catalog.pg_replication_origin_status TO ezone;
