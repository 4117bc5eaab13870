#!/bin/sh
# Issues every certificate an ezone deployment needs from one internal CA
# (docs/operations.md, "Certificates"). Needs only openssl.
#
#   deploy/pki/make-certs.sh -o DIR --site beijing=10.1.0.10 --site shanghai=10.2.0.10 \
#       --etcd-only tiebreaker=10.3.0.10
#
# DIR/ca.crt and DIR/ca.key: the CA (made on the first run, reused after: run
# it again with --site guangzhou=10.4.0.10 to add a site). Keep ca.key off the
# hosts. For each --site NAME=IP, in DIR/NAME/:
#
#   postgres-server.crt/.key  Postgres's server certificate (IP SAN: verify-full)
#   pg-ezone.crt/.key         Postgres client certificate, CN ezone (replicator, commands)
#   pg-ezone_orders.crt/.key  Postgres client certificate, CN ezone_orders (order service)
#   etcd-server.crt/.key      etcd's client-port certificate (IP SAN)
#   etcd-peer.crt/.key        etcd's peer-port certificate (IP SAN)
#   etcd-client.crt/.key      etcd client certificate, CN ezone (replicator, commands)
#   router-peer.crt/.key      the router's peer certificate: DNS SAN NAME.ezone.internal
#
# For each --etcd-only NAME=IP (a host running only an etcd member):
# etcd-server and etcd-peer. The routers' public HTTPS certificate is not made
# here: it comes from a CA the clients trust.
#
# Keys are EC P-256 in PKCS#8 PEM, mode 0600. Certificates are valid for
# DAYS days (default 825); the CA for 3650.
set -eu

out=
days=${DAYS:-825}
domain=${PEER_DOMAIN:-ezone.internal}
sites=
etcd_only=
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift 2 ;;
        --site) sites="$sites $2"; shift 2 ;;
        --etcd-only) etcd_only="$etcd_only $2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "make-certs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || { echo "make-certs.sh: -o DIR is required" >&2; exit 2; }
umask 077
mkdir -p "$out"

if [ ! -f "$out/ca.key" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out/ca.key" -out "$out/ca.crt" -days 3650 -subj "/CN=ezone internal CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 0644 "$out/ca.crt"
    echo "made $out/ca.crt"
fi

# issue DIR NAME SUBJECT EKU SAN: DIR/NAME.crt and DIR/NAME.key, signed by the CA.
issue() {
    i_dir=$1 i_name=$2 i_subj=$3 i_eku=$4 i_san=$5
    mkdir -p "$i_dir"
    ext="$i_dir/$i_name.ext"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$i_eku"
        if [ -n "$i_san" ]; then echo "subjectAltName=$i_san"; fi
    } > "$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$i_dir/$i_name.key" -out "$i_dir/$i_name.csr" -subj "$i_subj" 2>/dev/null
    openssl x509 -req -in "$i_dir/$i_name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$ext" \
        -out "$i_dir/$i_name.crt" 2>/dev/null
    rm -f "$i_dir/$i_name.csr" "$ext"
    chmod 0600 "$i_dir/$i_name.key"
    chmod 0644 "$i_dir/$i_name.crt"
    echo "made $i_dir/$i_name.crt ($i_subj${i_san:+, $i_san})"
}

etcd_certs() {
    e_dir=$1 e_name=$2 e_ip=$3
    # etcd 3.4 also dials its own client port with this certificate (its
    # gRPC gateway), so it carries clientAuth too.
    issue "$e_dir" etcd-server "/CN=etcd $e_name" serverAuth,clientAuth "IP:$e_ip,IP:127.0.0.1"
    issue "$e_dir" etcd-peer "/CN=etcd peer $e_name" serverAuth,clientAuth "IP:$e_ip"
}

for pair in $sites; do
    name=${pair%%=*} ip=${pair#*=}
    dir="$out/$name"
    issue "$dir" postgres-server "/CN=postgres $name" serverAuth "IP:$ip"
    issue "$dir" pg-ezone /CN=ezone clientAuth ""
    issue "$dir" pg-ezone_orders /CN=ezone_orders clientAuth ""
    issue "$dir" etcd-client /CN=ezone clientAuth ""
    issue "$dir" router-peer "/CN=router $name" serverAuth,clientAuth "DNS:$name.$domain"
    etcd_certs "$dir" "$name" "$ip"
done
for pair in $etcd_only; do
    name=${pair%%=*} ip=${pair#*=}
    etcd_certs "$out/$name" "$name" "$ip"
done
