-- The order service's privileges (docs/operations.md, "Postgres roles").
-- Run at each site after `ezone orders install` has created public.orders
-- and the fence (and again after an install that re-created them):
--
--   sudo -u postgres psql -v ON_ERROR_STOP=1 -d ezone < grants.sql

-- Its own table: read, insert, update (it never deletes).
GRANT SELECT, INSERT, UPDATE ON public.orders TO ezone_orders;

-- The fence trigger runs as the writer: it reads the city map, the user
-- shard list, the lease and the shard's fence row, the last FOR SHARE,
-- which Postgres allows only with an UPDATE privilege on the table: it is
-- granted on updated_at alone, so the service cannot open a fence.
GRANT USAGE ON SCHEMA ezone_fence TO ezone_orders;
GRANT SELECT ON ezone_fence.shards, ezone_fence.cities, ezone_fence.user_shards,
    ezone_fence.lease TO ezone_orders;
GRANT UPDATE (updated_at) ON ezone_fence.shards TO ezone_orders;
