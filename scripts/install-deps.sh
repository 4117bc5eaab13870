#!/usr/bin/env bash
# Installs the Debian 12 (bookworm) packages that ezone's build, tests and demo
# need; `make test`, `make demo` and `make build` run it first.
#
#   scripts/install-deps.sh            # the build, `make test`, `make demo`
#   scripts/install-deps.sh --bench    # also nginx-light and wrk (`ezone bench router`), postgresql-15-pglogical
#                                      # (the third system of `ezone bench replicator`)
#   scripts/install-deps.sh --lab-demo # also python3 (`make lab-demo`, scripts/demo.sh)
#   scripts/install-deps.sh --monitoring # also prometheus: `promtool`, which tests/tests/monitoring.rs runs if on PATH
#
# Each package is checked by what is actually used, not by its name:
#
#   package              checked by                                     used for
#   make                 `make` on PATH                                 the Makefile
#   gcc                  `cc` on PATH                                   rustc's linker; the C and assembly of the `ring` crate (TLS)
#   libc6-dev            /usr/include/stdio.h                           C headers and crt files for that linker and `ring`
#   ca-certificates      /etc/ssl/certs/ca-certificates.crt             cargo's HTTPS to crates.io
#   protobuf-compiler    `protoc` on PATH (or $PROTOC)                  the etcd-client crate's build (gRPC code generation)
#   libprotobuf-dev      google/protobuf/descriptor.proto next to protoc  the well-known .proto files that build imports
#   etcd-server          `etcd` on PATH (or $EZONE_ETCD_BIN)            etcd 3.4, started by the tests and the demo
#   etcd-client          `etcdctl` on PATH                              tests that read etcd directly
#   postgresql-15        /usr/lib/postgresql/15/bin/initdb (or $EZONE_PG_BIN)  Postgres 15 servers started by the tests and the demo;
#                                                                       also creates the `postgres` OS user they run as under root
#   postgresql-client-15 `psql` on PATH                                 psql and pg_isready, used by the tests
#   libfaketime          /usr/lib/*/faketime/libfaketimeMT.so.1 (or $EZONE_LIBFAKETIME)  preloaded around a site's processes by
#                                                                       `ezone chaos run` (the clock-skew fault) and its test
#   faketime             `faketime` on PATH                             the command-line wrapper (and libfaketime's README), to try a skew by hand
#   iproute2             `ip` in /usr/sbin, /sbin, /usr/bin or /bin     the network namespaces of the multi-host test (tests/tests/netns.rs)
#
# As root it installs what is missing (`apt-get update` once, then one
# `apt-get install --no-install-recommends`); otherwise it prints the exact
# install command and exits non-zero. The Rust toolchain is not a Debian
# package here (Debian 12's rustc is too old): it is only checked for, and
# rustup is named if it is missing.
set -euo pipefail

want_bench=
want_lab_demo=
want_monitoring=
for arg in "$@"; do
  case $arg in
    --bench) want_bench=1 ;;
    --lab-demo) want_lab_demo=1 ;;
    --monitoring) want_monitoring=1 ;;
    *) echo "usage: $0 [--bench] [--lab-demo] [--monitoring]" >&2; exit 2 ;;
  esac
done

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
have_cmd() { command -v "$1" >/dev/null 2>&1; }

# The protoc the build will use (prost-build takes $PROTOC, else `protoc` on
# PATH), and whether the well-known types are where that protoc looks for them:
# protoc adds <its dir>/../include to its import path (/usr/include for
# Debian's /usr/bin/protoc, which is where libprotobuf-dev puts them).
protoc_path() {
  if [ -n "${PROTOC:-}" ]; then echo "$PROTOC"; else command -v protoc 2>/dev/null || true; fi
}
have_wkt() {
  local p
  p=$(protoc_path)
  [ -n "$p" ] || p=/usr/bin/protoc
  p=$(readlink -f "$p" 2>/dev/null || echo "$p")
  [ -f "$(dirname "$p")/../include/google/protobuf/descriptor.proto" ] ||
    [ -f /usr/include/google/protobuf/descriptor.proto ]
}

# libfaketime's preload library, where chaos/src/clock.rs looks for it.
have_libfaketime() {
  if [ -n "${EZONE_LIBFAKETIME:-}" ]; then [ -f "$EZONE_LIBFAKETIME" ]; return; fi
  local f
  for f in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/*/faketime/libfaketime.so.1 \
    /usr/local/lib/faketime/libfaketimeMT.so.1 /usr/local/lib/faketime/libfaketime.so.1 \
    /usr/lib/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketime.so.1; do
    [ -f "$f" ] && return 0
  done
  return 1
}

check() {
  missing=()
  have_cmd make || missing+=(make)
  have_cmd cc || missing+=(gcc)
  [ -f /usr/include/stdio.h ] || have_pkg libc6-dev || missing+=(libc6-dev)
  [ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  [ -n "$(protoc_path)" ] || missing+=(protobuf-compiler)
  have_wkt || missing+=(libprotobuf-dev)
  if [ -n "${EZONE_ETCD_BIN:-}" ]; then :; else have_cmd etcd || missing+=(etcd-server); fi
  have_cmd etcdctl || missing+=(etcd-client)
  if [ -z "${EZONE_PG_BIN:-}" ] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    missing+=(postgresql-15)
  fi
  have_cmd psql || missing+=(postgresql-client-15)
  have_libfaketime || missing+=(libfaketime)
  have_cmd faketime || missing+=(faketime)
  [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || [ -x /usr/bin/ip ] || [ -x /bin/ip ] || missing+=(iproute2)
  if [ -n "$want_bench" ]; then
    have_cmd nginx || missing+=(nginx-light)
    have_cmd wrk || missing+=(wrk)
    # The bench looks for pglogical's server library next to the Postgres it runs.
    [ -f "$(dirname "${EZONE_PG_BIN:-/usr/lib/postgresql/15/bin}")/lib/pglogical.so" ] || missing+=(postgresql-15-pglogical)
  fi
  if [ -n "$want_lab_demo" ]; then
    have_cmd python3 || missing+=(python3)
  fi
  if [ -n "$want_monitoring" ]; then
    have_cmd promtool || missing+=(prometheus)
  fi
}

# What is not a Debian package: the Rust toolchain (checked, never installed).
check_rust() {
  if ! have_cmd cargo; then
    echo "cargo is not on PATH. Install Rust with rustup (https://rustup.rs):" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
    echo "then open a new shell (or run: . \"\$HOME/.cargo/env\")." >&2
    return 1
  fi
}

# Postgres refuses to run as root, so under root the tests run it as the
# `postgres` OS user, which Debian's postgresql-common package creates.
check_pg_user() {
  if [ "$(id -u)" -eq 0 ] && ! getent passwd postgres >/dev/null 2>&1; then
    echo "running as root, but there is no 'postgres' OS user for the test clusters to run as;" >&2
    echo "it comes with Debian's postgresql-15 package (postgresql-common), or create it with:" >&2
    echo "  adduser --system --group --home /var/lib/postgresql postgres" >&2
    return 1
  fi
}

check
if [ ${#missing[@]} -eq 0 ]; then
  check_pg_user
  check_rust
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "ezone needs these Debian packages, which are not installed: ${missing[*]}" >&2
  echo "install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  echo "(or run 'make test' as root, which installs them)" >&2
  exit 1
fi

echo "installing Debian packages: ${missing[*]}" >&2
installed_prometheus=
case " ${missing[*]} " in *" prometheus "*) installed_prometheus=1 ;; esac
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# The packages start services that ezone's tests do not use (the tests and the
# demo start their own etcd and Postgres on free ports): a system etcd on 2379
# and the default Postgres cluster on 5432. Stop those two services only (by
# their service manager, not by process name: other etcd or postgres processes
# on this machine are not ours to stop).
if [ -d /run/systemd/system ] && have_cmd systemctl; then
  systemctl stop etcd.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/etcd ]; then
  /etc/init.d/etcd stop >/dev/null 2>&1 || true
fi
if have_cmd pg_ctlcluster; then
  pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi
# Only promtool is wanted from the prometheus package, not the server it
# starts (port 9090); stopped only when installed just now.
if [ -n "$installed_prometheus" ]; then
  if [ -d /run/systemd/system ] && have_cmd systemctl; then
    systemctl stop prometheus.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
fi

check
if [ ${#missing[@]} -ne 0 ]; then
  echo "still missing after apt-get install: ${missing[*]}" >&2
  exit 1
fi
check_pg_user
check_rust
