#!/usr/bin/env bash
# `make demo`, for now: bring the lab up (real etcd, one Postgres 15 per site,
# the WAN fault proxy with ~30 ms round trip between the sites), show the
# topology it wrote into etcd, follow a live change through a watcher, then
# take everything down. Set DEMO_KEEP=1 to leave the lab running.
set -euo pipefail
dir=${1:-$PWD/.lab-demo}
ezone=${EZONE_BIN:-target/debug/ezone}

cleanup() {
  if [ "${DEMO_KEEP:-}" != 1 ]; then
    echo; echo "== taking the lab down"
    "$ezone" lab down --dir "$dir" || true
  else
    echo; echo "lab left running; stop it with: $ezone lab down --dir $dir"
  fi
}

"$ezone" lab down --dir "$dir" >/dev/null 2>&1 || true
echo "== bringing the lab up in $dir (etcd, postgres per site, WAN proxy)"
info=$("$ezone" lab up --sites beijing,shanghai --dir "$dir")
trap cleanup EXIT
echo "$info" | python3 -m json.tool
etcd=$(echo "$info" | python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["etcd"]))')

echo; echo "== the topology in etcd"
"$ezone" topo show --etcd "$etcd"

echo; echo "== a watcher follows a change (shard 1 frozen for a flip, epoch bumped by CAS)"
"$ezone" topo watch --etcd "$etcd" > "$dir/watch.log" 2>&1 &
watch_pid=$!
sleep 1
"$ezone" bench topology --etcd "$etcd" --prefix /ezone --changes 20 --quiet-table || true
sleep 0.5
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true
head -5 "$dir/watch.log"
echo "... ($(wc -l < "$dir/watch.log") versions seen by the watcher)"

echo; echo "== the lab"
"$ezone" lab status --dir "$dir" || true
