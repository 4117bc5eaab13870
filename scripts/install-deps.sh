#!/usr/bin/env bash
# Installs what ezone's build and tests need, from Debian's packages:
#   etcd-server, etcd-client (etcd 3.4, v3 API), protobuf-compiler (protoc, for
#   etcd-client's build), postgresql-15 + postgresql-client-15 (server binaries
#   in /usr/lib/postgresql/15/bin), and, for `make bench`, nginx-light and wrk.
# As root it installs what is missing; otherwise it says what to install.
set -euo pipefail

want_bench=${1:-}
missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

command -v etcd >/dev/null 2>&1 || have_pkg etcd-server || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || have_pkg etcd-client || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || have_pkg protobuf-compiler || missing+=(protobuf-compiler)
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && [ -z "${EZONE_PG_BIN:-}" ]; then
  missing+=(postgresql-15)
fi
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client-15)
if [ "$want_bench" = "--bench" ]; then
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "ezone needs these Debian packages, which are not installed: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
  echo "(or run 'make test' as root, which installs them)" >&2
  exit 1
fi

echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The postgresql-15 package creates a default cluster and starts it; ezone's
# tests start their own clusters, so stop the service if the package started one.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if command -v pg_ctlcluster >/dev/null 2>&1; then
  pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi
# etcd-server's package starts a system etcd on 2379; the lab uses its own ports,
# but stop it so nothing listens that the tests did not start.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi
pkill -x etcd >/dev/null 2>&1 || true
