#!/usr/bin/env bash
# Installs the system packages osvc needs on Debian when any is missing:
# wimlib-imagex (wimtools) and FUSE for the wimlib engine, gcab and cabextract
# that the tests check cabinets against, and etcd for the external-etcd tests.
set -euo pipefail

need=()
command -v wimlib-imagex >/dev/null 2>&1 || need+=(wimtools)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v gcab >/dev/null 2>&1 || need+=(gcab)
command -v cabextract >/dev/null 2>&1 || need+=(cabextract)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "osvc needs these Debian packages: ${need[*]}" >&2
    echo "install them as root: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -e /dev/fuse ]; then
  echo "/dev/fuse is missing: the wimlib engine mounts images through FUSE; load the fuse module (modprobe fuse) or run with FUSE access" >&2
  exit 1
fi
