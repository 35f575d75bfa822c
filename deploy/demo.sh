#!/usr/bin/env bash
# make demo: a server with embedded etcd and one agent on this machine, a
# sample WIM and sample update packages, real servicing of every applicable
# update, live progress and the result. Stops everything it started.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
work="${OSVC_DEMO_DIR:-$root/demo-data}"
addr="${OSVC_DEMO_ADDR:-127.0.0.1:7399}"
# The agent is also the site's distribution point: it serves the images there.
dp_addr="${OSVC_DEMO_DP_ADDR:-127.0.0.1:7398}"
export OSVC_SERVER="$addr"
# The server makes a certificate authority in its data directory on first
# start; osvcctl and the agent trust it (TLS, no --insecure).
export OSVC_CA_FILE="$work/server/pki/ca.crt"
# It also writes its first admin token there (0600); osvcctl calls with it.
export OSVC_TOKEN_FILE="$work/server/admin.token"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
  echo "something already answers on $addr: stop it or set OSVC_DEMO_ADDR" >&2
  exit 1
fi
if (exec 3<>"/dev/tcp/${dp_addr%:*}/${dp_addr##*:}") 2>/dev/null; then
  echo "something already answers on $dp_addr: stop it or set OSVC_DEMO_DP_ADDR" >&2
  exit 1
fi

rm -rf "$work"
mkdir -p "$work"

step "starting osvc-server (embedded etcd in $work/server) on $addr"
"$bin/osvc-server" --data-dir "$work/server" --listen "$addr" >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  [ -f "$OSVC_TOKEN_FILE" ] && "$bin/osvcctl" --timeout 2s image list >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.2
done

step "creating the sites: the central site CAS and the primary site PS1 under it (its agents service on the Automatic drive)"
"$bin/osvcctl" site create CAS --description "central administration site"
"$bin/osvcctl" site create PS1 --parent CAS --description "primary site" --drive Automatic
"$bin/osvcctl" site list

step "enrolling osvc-agent for site PS1 (also its distribution point, serving on $dp_addr): a single-use join token, then the agent's own certificate"
"$bin/osvcctl" agent token create --site PS1 --ttl 10m >"$work/join.token"
"$bin/osvc-agent" --server "$addr" --join-token-file "$work/join.token" --name demo-agent --data-dir "$work/agent" \
  --distribution-point --dp-listen "$dp_addr" >"$work/agent.log" 2>&1 &
pids+=($!)

step "creating a sample WIM and sample update packages"
"$bin/osvc-sample" -out "$work/sample"

step "agents"
for _ in $(seq 1 100); do
  "$bin/osvcctl" agent list | grep -q CONNECTED && break
  sleep 0.2
done
"$bin/osvcctl" agent list

step "importing the image: the server reads its header and indexes, the agent inspects it (verifies the whole file)"
"$bin/osvcctl" image import "$work/sample/install.wim" --site PS1 --id win11-enterprise --name "Windows 11 Enterprise" --watch

step "importing the update packages"
"$bin/osvcctl" update import "$work/sample/updates"

step "updates applicable to images/win11-enterprise"
"$bin/osvcctl" update list --applicable-to win11-enterprise

step "scheduling all applicable updates (remove superseded, export, then update the distribution points)"
"$bin/osvcctl" schedule create win11-enterprise --all-applicable --remove-superseded --continue-on-error --update-distribution-points --watch

step "inspection of the new version"
inspection=$("$bin/osvcctl" image get win11-enterprise -o json | grep -o '"inspectionRun": *"runs/[^"]*"' | tail -n 1 | grep -o 'runs/[^"]*')
"$bin/osvcctl" run watch "$inspection"

step "the serviced image"
"$bin/osvcctl" image get win11-enterprise

step "distribution points: the new version goes to them once inspected"
for _ in $(seq 1 300); do
  "$bin/osvcctl" dp list | grep -q DISTRIBUTED && break
  sleep 0.2
done
"$bin/osvcctl" dp list

step "a deployment client fetches the image from the distribution point over HTTP, with a range request first"
url="http://$dp_addr/images/win11-enterprise"
curl -sS -r 0-1023 -o "$work/first-kib" -w "GET $url (Range: bytes=0-1023): %{http_code}, %{size_download} bytes\n" "$url"
curl -sS -o "$work/fetched.wim" -w "GET $url: %{http_code}, %{size_download} bytes\n" "$url"
echo "sha256 of the fetched file: $(sha256sum "$work/fetched.wim" | cut -d' ' -f1)"
