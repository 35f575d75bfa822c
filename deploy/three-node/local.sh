#!/usr/bin/env bash
# Three osvc-server replicas on a three-member etcd cluster and one object
# store (versitygw over a folder), all on this machine's loopback: the shape
# of a three-node installation, to try replicas, failover and backups. On
# real nodes each member, replica and the store run on their own machines,
# with TLS to etcd and to the store (README: "Several servers").
#
#   deploy/three-node/local.sh          start, print how to use it, run until Ctrl-C
#   deploy/three-node/local.sh check    start, check failover and a backup, stop
#
# Needs `make build` and deploy/install-deps.sh (etcd, etcdctl, versitygw).
# Everything is kept in $OSVC_THREE_NODE_DIR (default ./three-node-data).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-run}
dir=${OSVC_THREE_NODE_DIR:-$PWD/three-node-data}
bin=${OSVC_BIN_DIR:-$PWD/bin}
gobin=$(go env GOPATH 2>/dev/null)/bin
versitygw=$(command -v versitygw || echo "$gobin/versitygw")
for tool in etcd etcdctl "$versitygw" "$bin/osvc-server" "$bin/osvcctl"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "three-node: $tool is missing; run deploy/install-deps.sh and make build" >&2
    exit 1
  fi
done

mkdir -p "$dir"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT

# etcd: three members, ports 2379N (clients) and 2380N (peers).
initial=n1=http://127.0.0.1:23801,n2=http://127.0.0.1:23802,n3=http://127.0.0.1:23803
endpoints=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
state=new
[ -d "$dir/etcd1" ] && state=existing
for i in 1 2 3; do
  etcd --name "n$i" --data-dir "$dir/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$initial" --initial-cluster-state "$state" --log-level error \
    >"$dir/etcd$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 || {
  echo "three-node: etcd did not start; see $dir/etcd*.log" >&2
  exit 1
}

# The object store: a bucket is a folder of versitygw's root.
mkdir -p "$dir/s3/osvc"
if [ ! -s "$dir/s3.secret" ]; then
  (umask 077 && head -c 24 /dev/urandom | base64 >"$dir/s3.secret")
fi
"$versitygw" --access osvc --secret "$(cat "$dir/s3.secret")" --port 127.0.0.1:9100 --quiet posix "$dir/s3" \
  >"$dir/s3.log" 2>&1 &
pids+=($!)

# The replicas, ports 730N. The first makes the authority and the first admin
# token; the others take the authority from etcd.
server_pids=()
start_server() {
  "$bin/osvc-server" --data-dir "$dir/server$1" --listen "127.0.0.1:730$1" --etcd-endpoints "$endpoints" \
    --s3-endpoint http://127.0.0.1:9100 --s3-bucket osvc --s3-path-style \
    --s3-access-key-id osvc --s3-secret-key-file "$dir/s3.secret" >>"$dir/server$1.log" 2>&1 &
  pids+=($!)
  server_pids[$1]=$!
}
servers=127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303
export OSVC_SERVER=$servers OSVC_CA_FILE=$dir/server1/pki/ca.crt OSVC_TOKEN_FILE=$dir/server1/admin.token
start_server 1
for _ in $(seq 150); do [ -s "$OSVC_TOKEN_FILE" ] && break; sleep 0.2; done
start_server 2
start_server 3
for i in 1 2 3; do
  for _ in $(seq 150); do
    "$bin/osvcctl" --server "127.0.0.1:730$i" whoami >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$bin/osvcctl" --server "127.0.0.1:730$i" whoami >/dev/null
done
echo "three-node: 3 etcd members, 3 replicas ($servers), an object store; data in $dir"

if [ "$mode" = check ]; then
  "$bin/osvcctl" site get PS1 >/dev/null 2>&1 || "$bin/osvcctl" site create PS1 --description "three-node check" >/dev/null
  # Replica 1 dies: osvcctl with the list goes on through another.
  kill -9 "${server_pids[1]}"
  wait "${server_pids[1]}" 2>/dev/null || true
  "$bin/osvcctl" site get PS1 | grep PS1 >/dev/null
  echo "three-node: replica 1 killed; osvcctl answered through another replica"
  # A snapshot is taken from one member.
  etcdctl --endpoints http://127.0.0.1:23792 snapshot save "$dir/backup.db" >/dev/null 2>&1
  echo "three-node: etcd snapshot in $dir/backup.db ($(stat -c %s "$dir/backup.db") bytes)"
  # Restore it into a new one-member etcd and find the site in it.
  rm -rf "$dir/restored"
  etcdctl snapshot restore "$dir/backup.db" --data-dir "$dir/restored" --name r1 \
    --initial-cluster r1=http://127.0.0.1:23809 --initial-advertise-peer-urls http://127.0.0.1:23809 >/dev/null 2>&1
  etcd --name r1 --data-dir "$dir/restored" --listen-client-urls http://127.0.0.1:23799 \
    --advertise-client-urls http://127.0.0.1:23799 --listen-peer-urls http://127.0.0.1:23809 \
    --initial-advertise-peer-urls http://127.0.0.1:23809 --initial-cluster r1=http://127.0.0.1:23809 \
    --log-level error >"$dir/restored.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    etcdctl --endpoints http://127.0.0.1:23799 get /osvc/sites/PS1 --keys-only 2>/dev/null | grep PS1 >/dev/null && break
    sleep 0.2
  done
  etcdctl --endpoints http://127.0.0.1:23799 get /osvc/sites/PS1 --keys-only | grep PS1 >/dev/null
  echo "three-node: the snapshot restored into a new etcd holds sites/PS1"
  exit 0
fi

cat <<EOF
Use it (in another shell):
  export OSVC_SERVER=$servers
  export OSVC_CA_FILE=$OSVC_CA_FILE OSVC_TOKEN_FILE=$OSVC_TOKEN_FILE
  bin/osvcctl site create PS1
  bin/osvcctl agent token create --site PS1 > join.token
  bin/osvc-agent --server $servers --ca-file $OSVC_CA_FILE --name agent-ps1 --join-token-file join.token
Kill a replica (its pid is in the process list) and watch the agent move.
Back up: etcdctl --endpoints http://127.0.0.1:23791 snapshot save backup.db, and copy $dir/s3.
Ctrl-C stops everything.
EOF
wait
