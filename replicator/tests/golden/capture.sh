#!/usr/bin/env bash
# Captures real pgoutput (protocol version 1) bytes from a throwaway PostgreSQL 15
# cluster and prints them in the golden-file format read by
# `replicator/tests/pgoutput_golden.rs`:
#
#     text|binary <lsn> <hex of one pgoutput message>   (pg_logical_slot_peek_binary_changes)
#     copy <hex of one CopyData payload>                  (a real walsender, START_REPLICATION)
#
# Usage (as root or as the postgres user; the cluster runs as `postgres`):
#
#     replicator/tests/golden/capture.sh > replicator/tests/golden/pg15_captured.txt
#
# The cluster lives in a fresh temporary directory, listens only on a Unix socket
# in that directory (plus 127.0.0.1 on $PORT), and is stopped and removed on exit.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-54391}
DIR=$(mktemp -d /tmp/ezone-pgoutput-capture.XXXXXX)
chmod 755 "$DIR"

as_pg() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT

chown postgres: "$DIR" 2>/dev/null || true
as_pg "$PGBIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
    -o "-p $PORT -k $DIR -c listen_addresses='' -c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4 -c fsync=off -c wal_sender_timeout=1s" \
    start >/dev/null

psql() { as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres "$@"; }

psql >/dev/null <<'SQL'
CREATE TYPE mood AS ENUM ('ok', 'sad');
-- `big` is stored out of line and uncompressed so that an UPDATE which does not
-- touch it sends the 'u' (unchanged TOASTed value) column kind.
CREATE TABLE orders (
    id     bigint PRIMARY KEY,
    shard  int NOT NULL,
    note   text,
    big    text,
    amount numeric(10,2),
    feel   mood
);
ALTER TABLE orders ALTER COLUMN big SET STORAGE EXTERNAL;
-- REPLICA IDENTITY FULL: UPDATE and DELETE carry the whole old row ('O').
CREATE TABLE audit (id int, msg text);
ALTER TABLE audit REPLICA IDENTITY FULL;
CREATE PUBLICATION pub FOR TABLE orders, audit;
SELECT pg_create_logical_replication_slot('s', 'pgoutput');
SELECT pg_replication_origin_create('ezone_beijing');
SQL

psql >/dev/null <<'SQL'
BEGIN;
INSERT INTO orders VALUES (1, 7, 'hello', repeat('x', 2500), 12.50, 'ok'),
                          (2, 7, NULL, 'small', NULL, NULL);
COMMIT;
-- Does not touch `big`: the new tuple carries 'u' for it.
UPDATE orders SET note = 'changed' WHERE id = 1;
-- Changes the primary key: the old key is sent ('K').
UPDATE orders SET id = 10 WHERE id = 2;
DELETE FROM orders WHERE id = 10;
INSERT INTO audit VALUES (1, 'a');
UPDATE audit SET msg = 'b';
DELETE FROM audit;
SELECT pg_logical_emit_message(true, 'ezone', 'marker');
SELECT pg_logical_emit_message(false, 'ezone', '\xff00fe'::bytea);
TRUNCATE orders, audit RESTART IDENTITY CASCADE;
-- A transaction applied by a replicator carries an origin ('O' message).
SELECT pg_replication_origin_session_setup('ezone_beijing');
BEGIN;
SELECT pg_replication_origin_xact_setup('0/12345678', '2024-01-02 03:04:05+00');
INSERT INTO orders VALUES (3, 9, 'from beijing', NULL, 1.00, 'sad');
COMMIT;
SELECT pg_replication_origin_session_reset();
SQL

echo "# Real pgoutput bytes captured from PostgreSQL $(as_pg "$PGBIN/postgres" --version | awk '{print $3}')"
echo "# by replicator/tests/golden/capture.sh on $(date -u +%Y-%m-%d) (see the script for the SQL)."
echo "# Each line: <section> <lsn> <hex of one pgoutput message>; 'text' rows use"
echo "# proto_version 1, publication pub, messages true; 'binary' rows add binary true."
for mode in text binary; do
    psql -At -F ' ' -c "SELECT '$mode', lsn, encode(data, 'hex')
        FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
            'proto_version', '1', 'publication_names', 'pub', 'messages', 'true',
            'binary', '$([ $mode = binary ] && echo true || echo false)')"
done

# The same changes once more, this time as CopyBoth frames from a walsender:
# a minimal protocol-3 client over the Unix socket (trust authentication)
# runs START_REPLICATION and records every CopyData payload ('w' XLogData,
# 'k' keepalive) until the server asks for a reply (a keepalive with the
# reply flag, sent after wal_sender_timeout / 2 of silence).
echo "# 'copy' rows: CopyData payloads from START_REPLICATION SLOT s LOGICAL 0/0"
echo "# (proto_version '1', publication_names 'pub', messages 'true'); send times vary."
python3 - "$DIR/.s.PGSQL.$PORT" <<'PY'
import socket, struct, sys, time

sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.settimeout(10)

def send(tag, body):
    sock.sendall(tag + struct.pack("!i", len(body) + 4) + body)

def recv_exact(n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise SystemExit("connection closed")
        out += chunk
    return out

def recv():
    tag = recv_exact(1)
    (length,) = struct.unpack("!i", recv_exact(4))
    return tag, recv_exact(length - 4)

params = b"user\0postgres\0database\0postgres\0replication\0database\0\0"
body = struct.pack("!i", 196608) + params
sock.sendall(struct.pack("!i", len(body) + 4) + body)
while True:
    tag, body = recv()
    if tag == b"E":
        raise SystemExit(body)
    if tag == b"Z":
        break
send(b"Q", b"START_REPLICATION SLOT s LOGICAL 0/0 (proto_version '1', "
           b"publication_names 'pub', messages 'true')\0")
deadline = time.time() + 10
while time.time() < deadline:
    tag, body = recv()
    if tag == b"E":
        raise SystemExit(body)
    if tag != b"d":
        continue
    print("copy", body.hex())
    if body[:1] == b"k" and body[-1] == 1:
        break
sock.close()
PY
psql -c "SELECT pg_drop_replication_slot('s')" >/dev/null 2>&1 || true
