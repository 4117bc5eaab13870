#!/usr/bin/env bash
# shellcheck disable=SC2317  # report() and its helpers run from the EXIT trap
# fresh-check: prove the README's commands on a Debian 12 root that has never
# seen the project. Run as root on a Debian (or Debian-like) host:
#
#   scripts/fresh-check.sh [--dir DIR] [--demo] [--worktree] [--overlay PATH]...
#                          [--keep] [--rebootstrap] [--tool mmdebstrap|debootstrap]
#                          [--variant minbase|apt|required|important|standard]
#
# What it does:
#   1. Makes a minimal Debian 12 (bookworm) root with mmdebstrap (default) or
#      debootstrap, installing the tool from Debian's packages if missing. It
#      uses the host's own apt sources (the active bookworm entries of
#      /etc/apt/sources.list and /etc/apt/sources.list.d/*.list|*.sources;
#      other suites, e.g. third-party repositories, are left out and named) and
#      the host's apt network settings (Acquire::*::Proxy, Check-Valid-Until,
#      Check-Date, Retries, ForceIPv4/6 from apt-config, and $http_proxy and
#      friends), for the bootstrap and inside the new root. The bootstrapped
#      root is kept as DIR/base-bookworm-VARIANT.tar and reused by later runs
#      (it has not seen the project); --rebootstrap makes it again.
#   2. Unpacks that base into DIR/root (removing the previous one), and puts
#      the project at /root/ezone in it: a `git clone` of HEAD by default, or
#      with --worktree that clone plus the working tree's uncommitted changes
#      and untracked, not ignored, files; --overlay PATH (repeatable) copies
#      only that file or directory from the working tree over the clone.
#      The host's locally added CA certificates (/usr/local/share/
#      ca-certificates, where Debian keeps them; e.g. for a TLS-inspecting
#      proxy the host trusts) are copied to the same place in the root, so
#      that they are trusted there once the ca-certificates package is in.
#   3. Mounts /proc, /sys (read-only), a private /dev (tmpfs with the usual
#      nodes), /dev/pts (new instance) and /dev/shm (tmpfs) in the root, and
#      the host's Rust toolchain read-only: with rustup, $RUSTUP_HOME at
#      /opt/rust/rustup and the directory of the `cargo` proxy at
#      /opt/rust/cargo-bin; without rustup, `rustc --print sysroot` at
#      /opt/rust/toolchain. The build gets its own CARGO_HOME (/root/.cargo in
#      the root, so crates come from crates.io on every run; the host's
#      $CARGO_HOME/config.toml is copied in if there is one).
#   4. Inside, with chroot as root and CI=true: installs `make` (the one
#      package the README's prerequisites ask for by hand), then runs
#      `make test`, and with --demo `make demo`. Output goes to the terminal
#      and to DIR/make-test.log (DIR/make-demo.log), each line time-stamped.
#   5. On exit (also on failure or Ctrl-C) it stops whatever is still running
#      inside the root (processes whose root directory is DIR/root, by pid),
#      unmounts everything, and prints the exit codes, the time of each phase,
#      the test summary and the last lines of the output. The root is deleted
#      after a passing run unless --keep; a failing run keeps it.
#
# Defaults: --dir /var/tmp/ezone-fresh-check, --tool mmdebstrap, --variant
# minbase. It needs about 10 GB of disk in DIR (the build's target/ is most
# of it) and takes roughly, on 2 cores: the bootstrap under a minute (first
# run only), then `make test` 10-15 minutes (mostly the build). The exit code
# is `make test`'s (or `make demo`'s, if that failed).
set -euo pipefail

usage() { sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

dir=/var/tmp/ezone-fresh-check
demo=
worktree=
cloned=
overlays=()
keep=
rebootstrap=
tool=mmdebstrap
variant=minbase
while [ $# -gt 0 ]; do
  case $1 in
    --dir) dir=${2:?--dir needs a directory}; shift ;;
    --dir=*) dir=${1#--dir=} ;;
    --demo) demo=1 ;;
    --worktree) worktree=1 ;;
    --overlay) overlays+=("${2:?--overlay needs a path in the repository}"); shift ;;
    --overlay=*) overlays+=("${1#--overlay=}") ;;
    --keep) keep=1 ;;
    --rebootstrap) rebootstrap=1 ;;
    --tool) tool=${2:?--tool needs mmdebstrap or debootstrap}; shift ;;
    --tool=*) tool=${1#--tool=} ;;
    --variant) variant=${2:?--variant needs a name}; shift ;;
    --variant=*) variant=${1#--variant=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $tool in mmdebstrap|debootstrap) ;; *) echo "--tool: mmdebstrap or debootstrap" >&2; exit 2 ;; esac

if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-check needs root (debootstrap, chroot, mounts); run it with sudo" >&2
  exit 1
fi

repo=$(cd "$(dirname "$0")/.." && pwd -P)
git -C "$repo" rev-parse --git-dir >/dev/null
mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
root=$dir/root
base=$dir/base-bookworm-$variant.tar
suite=bookworm

# ---------------------------------------------------------------- helpers

t_start=$(date +%s)
phase_names=()
phase_secs=()
phase_name=
phase_t0=
phase() {
  local now
  now=$(date +%s)
  if [ -n "$phase_name" ]; then
    phase_names+=("$phase_name")
    phase_secs+=($((now - phase_t0)))
  fi
  phase_name=${1:-}
  phase_t0=$now
  [ -z "$phase_name" ] || printf '\n== [%(%H:%M:%S)T] %s\n' -1 "$phase_name"
}
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
# Prefix each line with the time of day (bash's printf, no fork per line).
stamp() { local l; while IFS= read -r l || [ -n "$l" ]; do printf '[%(%H:%M:%S)T] %s\n' -1 "$l"; done; }

# Mount points at or under a path (deepest first), from /proc/self/mountinfo.
mounts_under() {
  awk -v p="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == p || index(m, p "/") == 1) print m }' \
    /proc/self/mountinfo | sort -r
}
# Processes whose root directory is the new root: only ever ones this script
# started there (with chroot), and their children.
procs_in_root() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    [ "$r" = "$root" ] && echo "${p#/proc/}"
  done
  return 0
}
stop_root_procs() {
  local pids
  mapfile -t pids < <(procs_in_root)
  [ ${#pids[@]} -gt 0 ] || return 0
  echo "stopping processes left in the root: ${pids[*]}" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.5
    mapfile -t pids < <(procs_in_root)
    [ ${#pids[@]} -gt 0 ] || return 0
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 0.5
}
unmount_root() {
  local m
  for m in $(mounts_under "$root"); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
}

# ---------------------------------------------------------------- the host's apt

# The host's active bookworm sources: deb822 stanzas and one-line entries.
host_sources_822=$dir/host.sources
host_sources_list=$dir/host.list
host_aptconf=$dir/host-apt.conf
collect_host_apt() {
  : >"$host_sources_822"
  : >"$host_sources_list"
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE COMPONENTS...: keep bookworm* suites.
    awk -v src="$f" '
      /^[ \t]*deb(-src)?[ \t]/ {
        i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        suite = $(i + 1)
        if (suite ~ /^bookworm/) print; else print "skip " src ": " $0 > "/dev/stderr"
      }' "$f" >>"$host_sources_list" 2>>"$dir/skipped-sources"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v src="$f" 'BEGIN { RS = ""; ORS = "\n\n" }
      {
        keep = 0; enabled = 1; n = split($0, lines, "\n")
        for (j = 1; j <= n; j++) {
          if (lines[j] ~ /^Suites:/ && lines[j] ~ /[ \t]bookworm/) keep = 1
          if (lines[j] ~ /^Enabled:[ \t]*(no|false)/) enabled = 0
        }
        if (keep && enabled) print; else if (enabled) print "skip " src ": " lines[1] " ..." > "/dev/stderr"
      }' "$f" >>"$host_sources_822" 2>>"$dir/skipped-sources"
  done
  if [ -s "$dir/skipped-sources" ]; then
    echo "host apt entries left out (not a bookworm suite):" >&2
    sed 's/^/  /' "$dir/skipped-sources" >&2
  fi
  rm -f "$dir/skipped-sources"
  # apt's network settings: proxies, and what a snapshot mirror needs.
  apt-config dump 2>/dev/null | grep -E \
    '^Acquire::(http|https|ftp|socks)::Proxy|^Acquire::(Check-Valid-Until|Check-Date|Max-FutureTime|Retries|ForceIPv4|ForceIPv6) ' \
    >"$host_aptconf" || true
}

# ---------------------------------------------------------------- phases

report() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  phase
  stop_root_procs
  unmount_root
  echo
  echo "================ fresh-check report"
  echo "project: $repo at ${cloned:-(not copied)}${worktree:+ + working tree changes}${overlays[*]:+ + ${overlays[*]} from the working tree}"
  echo "root:    $root ($tool, $suite, variant $variant)"
  local i
  for i in "${!phase_names[@]}"; do
    printf '  %-44s %s\n' "${phase_names[$i]}" "$(fmt_secs "${phase_secs[$i]}")"
  done
  printf '  %-44s %s\n' "total" "$(fmt_secs $(($(date +%s) - t_start)))"
  local log
  for log in "$dir/make-test.log" "$dir/make-demo.log"; do
    [ -f "$log" ] || continue
    echo
    echo "---- last lines of $log"
    tail -n 25 "$log"
    echo "---- summary of $(basename "$log")"
    # nextest's summary, or the sum of cargo test's per-binary results.
    grep -E 'Summary \[|tests run:' "$log" | tail -n 2
    awk '/test result: / {
           for (i = 1; i <= NF; i++) {
             if ($(i) ~ /^passed;?$/) p += $(i - 1)
             if ($(i) ~ /^failed;?$/) f += $(i - 1)
             if ($(i) ~ /^ignored;?$/) g += $(i - 1)
           }
           n++
         }
         END { if (n) printf "cargo test: %d passed, %d failed, %d ignored (%d test binaries)\n", p, f, g, n }' "$log"
    grep -E '^\[[0-9:]+\] test .* \.\.\. FAILED$|^\[[0-9:]+\] +FAIL \[' "$log" | sed 's/^\[[0-9:]*\] /  failed: /' | sort -u
    # make demo's verdict.
    grep -E '\] (verdict:|lost:|demo (OK|FAILED))' "$log" | tail -n 3
  done
  echo
  [ -n "${test_rc:-}" ] && echo "make test: exit $test_rc"
  [ -n "${demo_rc:-}" ] && echo "make demo: exit $demo_rc"
  if [ "$rc" -eq 0 ] && [ -z "$keep" ]; then
    remove_root && echo "root removed (pass --keep to keep it)"
  elif [ -d "$root" ]; then
    echo "root kept: $root (chroot $root /bin/bash to look around)"
  fi
  echo "result: $([ "$rc" -eq 0 ] && echo PASS || echo "FAIL (exit $rc)")"
  exit "$rc"
}

ensure_tool() {
  command -v "$tool" >/dev/null 2>&1 && return 0
  echo "installing $tool from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
}

proxy_env() {
  local v
  for v in http_proxy https_proxy ftp_proxy no_proxy HTTP_PROXY HTTPS_PROXY FTP_PROXY NO_PROXY; do
    [ -n "${!v:-}" ] && printf '%s=%s\n' "$v" "${!v}"
  done
  return 0
}

bootstrap() {
  local tmp=$dir/bootstrap.tmp
  rm -rf --one-file-system "$tmp" "$base.tmp"
  if [ "$tool" = mmdebstrap ]; then
    local mirrors=() opts=()
    [ -s "$host_sources_list" ] && mirrors+=("$host_sources_list")
    [ -s "$host_sources_822" ] && mirrors+=("$host_sources_822")
    [ ${#mirrors[@]} -gt 0 ] || echo "no bookworm entries in the host's apt sources; using mmdebstrap's default mirrors" >&2
    [ -s "$host_aptconf" ] && opts+=(--aptopt="$host_aptconf")
    mmdebstrap --mode=root --variant="$variant" --format=tar "${opts[@]}" \
      "$suite" "$base.tmp" "${mirrors[@]}"
  else
    # debootstrap takes one mirror: the host's first plain `bookworm` entry.
    local mirror
    mirror=$( { awk '{ i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                       if ($(i + 1) == "bookworm" && $1 == "deb") { print $i; exit } }' "$host_sources_list"
                awk 'BEGIN { RS = "" } /\nSuites:[^\n]*[ \t]bookworm([ \t\n]|$)/ {
                       if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { u = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", u); print u; exit } }' "$host_sources_822"
              } | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    local proxy
    proxy=$(sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' "$host_aptconf" | head -n 1)
    http_proxy=${http_proxy:-$proxy} debootstrap --variant="$variant" "$suite" "$tmp" "$mirror"
    rm -f "$tmp/etc/apt/sources.list"
    [ -s "$host_sources_list" ] && cp "$host_sources_list" "$tmp/etc/apt/sources.list.d/host.list"
    [ -s "$host_sources_822" ] && cp "$host_sources_822" "$tmp/etc/apt/sources.list.d/host.sources"
    [ -s "$tmp/etc/apt/sources.list.d/host.list" ] || [ -s "$tmp/etc/apt/sources.list.d/host.sources" ] ||
      echo "deb $mirror $suite main" >"$tmp/etc/apt/sources.list"
    [ -s "$host_aptconf" ] && cp "$host_aptconf" "$tmp/etc/apt/apt.conf.d/99host"
    chroot "$tmp" apt-get clean
    rm -rf "$tmp"/var/lib/apt/lists/*
    tar --numeric-owner -C "$tmp" -cf "$base.tmp" .
    rm -rf --one-file-system "$tmp"
  fi
  mv "$base.tmp" "$base"
}

# Refuse to delete the root while anything is still mounted in it (a bind
# mount of a host directory would otherwise be deleted through).
remove_root() {
  unmount_root
  if [ -n "$(mounts_under "$root")" ]; then
    echo "still mounted under $root, not removing it:" >&2
    mounts_under "$root" >&2
    return 1
  fi
  rm -rf --one-file-system "$root"
}

make_root() {
  remove_root
  rm -f "$dir/make-test.log" "$dir/make-demo.log"
  mkdir -p "$root"
  tar --numeric-owner -xpf "$base" -C "$root"
  # What any Debian machine has that a bare bootstrap may not.
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    echo "host's local CA certificates copied: $(cd /usr/local/share/ca-certificates && echo *)"
  fi
  [ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
}

copy_project() {
  local dest=$root/root/ezone head
  head=$(git -C "$repo" rev-parse HEAD)
  cloned=$(git -C "$repo" rev-parse --short "$head")
  git -c safe.directory='*' clone --quiet --no-hardlinks --no-checkout "$repo" "$dest"
  git -C "$dest" checkout --quiet "$head"
  if [ -n "$worktree" ]; then
    # Uncommitted changes and untracked (not ignored) files, over the clone.
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -xf - -C "$dest"
    (cd "$repo" && git ls-files -z --deleted) | (cd "$dest" && xargs -0 -r rm -f --)
  fi
  local o
  for o in "${overlays[@]}"; do
    if [ ! -e "$repo/$o" ]; then
      echo "--overlay $o: no such file in $repo" >&2
      return 1
    fi
    (cd "$repo" && tar -cf - -- "$o") | tar -xf - -C "$dest"
  done
  echo "project: $(git -C "$dest" log -1 --format='%h %s')${worktree:+ + working tree}${overlays[*]:+ + working-tree copies of: ${overlays[*]}}"
}

rust_env=()
mount_root() {
  # A private bind of the root onto itself: nothing mounted below it can
  # propagate anywhere else.
  mount --bind "$root" "$root"
  mount --make-private "$root"
  mount -t proc proc "$root/proc"
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
  mount -t tmpfs -o nosuid,mode=0755,size=64m tmpfs "$root/dev"
  local n name major minor
  for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    read -r name major minor <<<"$n"
    mknod -m 666 "$root/dev/$name" c "$major" "$minor"
  done
  ln -s /proc/self/fd "$root/dev/fd"
  ln -s /proc/self/fd/0 "$root/dev/stdin"
  ln -s /proc/self/fd/1 "$root/dev/stdout"
  ln -s /proc/self/fd/2 "$root/dev/stderr"
  mkdir -p "$root/dev/pts" "$root/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
  ln -s pts/ptmx "$root/dev/ptmx"
  mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/dev/shm"

  # The host's Rust toolchain, read-only.
  local cargo_bin rustup_home sysroot
  cargo_bin=$(command -v cargo || true)
  if [ -z "$cargo_bin" ]; then
    echo "no cargo on this host's PATH: install Rust (rustup) first" >&2
    return 1
  fi
  if command -v rustup >/dev/null 2>&1; then
    rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
    echo "rust: $(rustup which cargo) (rustup home $rustup_home, proxies in $(dirname "$cargo_bin"))"
    mkdir -p "$root/opt/rust/rustup" "$root/opt/rust/cargo-bin"
    mount --bind "$rustup_home" "$root/opt/rust/rustup"
    mount -o remount,bind,ro "$root/opt/rust/rustup"
    mount --bind "$(dirname "$cargo_bin")" "$root/opt/rust/cargo-bin"
    mount -o remount,bind,ro "$root/opt/rust/cargo-bin"
    rust_env=(RUSTUP_HOME=/opt/rust/rustup PATH=/opt/rust/cargo-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    [ -n "${RUSTUP_TOOLCHAIN:-}" ] && rust_env+=(RUSTUP_TOOLCHAIN="$RUSTUP_TOOLCHAIN")
  else
    sysroot=$(rustc --print sysroot)
    echo "rust: toolchain at $sysroot (no rustup)"
    mkdir -p "$root/opt/rust/toolchain"
    mount --bind "$sysroot" "$root/opt/rust/toolchain"
    mount -o remount,bind,ro "$root/opt/rust/toolchain"
    rust_env=(PATH=/opt/rust/toolchain/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
  fi
  # The build's own CARGO_HOME (registry cache, git checkouts) in the root.
  mkdir -p "$root/root/.cargo"
  local host_cargo_home=${CARGO_HOME:-$HOME/.cargo}
  for n in config.toml config; do
    if [ -f "$host_cargo_home/$n" ]; then
      cp "$host_cargo_home/$n" "$root/root/.cargo/$n"
      echo "copied the host's $host_cargo_home/$n into the root's CARGO_HOME"
    fi
  done
  rust_env+=(CARGO_HOME=/root/.cargo)
}

# Run a shell command in the root as root, with a clean login-like environment.
in_root() {
  local envs=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8 CI=true "${rust_env[@]}")
  local line
  while IFS= read -r line; do envs+=("$line"); done < <(proxy_env)
  chroot "$root" /usr/bin/env -i "${envs[@]}" /bin/bash -c "$1"
}

# ---------------------------------------------------------------- main

trap report EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
df -h "$dir" | sed 's/^/disk: /'

phase "prepare: $tool on the host, the host's apt sources"
ensure_tool
collect_host_apt
echo "sources for the root:"; cat "$host_sources_list" "$host_sources_822" | sed '/^$/d; s/^/  /'
[ -s "$host_aptconf" ] && { echo "apt settings for the root:"; sed 's/^/  /' "$host_aptconf"; }

if [ -n "$rebootstrap" ] || [ ! -s "$base" ]; then
  phase "bootstrap: $tool --variant=$variant $suite"
  bootstrap
else
  echo "reusing the bootstrapped base $base (made $(date -r "$base" '+%F %T'); --rebootstrap to redo)"
fi

phase "root: unpack the base, copy the project"
make_root
copy_project

phase "mount /proc /sys /dev /dev/pts /dev/shm and the Rust toolchain"
mount_root
in_root 'cargo --version && rustc --version'

phase "prerequisite: apt-get install make"
in_root 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends make >/dev/null && make --version | head -n 1'

# Run a make target in the root, time-stamped into a log. In the background
# and waited for, so that a signal to this script alone (kill, timeout) runs
# the EXIT trap at once, which stops what runs in the root. The status is
# make's (pipefail; stamp and tee do not fail).
run_make() {
  local rc=0
  in_root "cd /root/ezone && make $1" 2>&1 | stamp | tee "$dir/make-$1.log" &
  wait $! || rc=$?
  return "$rc"
}

phase "make test"
rc=0
run_make test || rc=$?
test_rc=$rc
[ "$test_rc" -eq 0 ] || exit "$test_rc"

if [ -n "$demo" ]; then
  phase "make demo"
  rc=0
  run_make demo || rc=$?
  demo_rc=$rc
  [ "$demo_rc" -eq 0 ] || exit "$demo_rc"
fi
exit 0
