#!/usr/bin/env bash
# Installs the system packages osvc needs on Debian when any is missing:
# wimlib-imagex (wimtools) and FUSE for the wimlib engine, gcab and cabextract
# that the tests check cabinets against, uudecode (sharutils) for test
# cabinets stored uuencoded, etcd for the external-etcd tests and etcdctl for
# the three-node example's backup, jq for the README's grpcurl examples; builds
# versitygw, the S3-compatible server the object store tests run, and
# grpcurl; then
# fetches the public test cabinets the cab tests read (see below).
set -euo pipefail

need=()
command -v wimlib-imagex >/dev/null 2>&1 || need+=(wimtools)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v gcab >/dev/null 2>&1 || need+=(gcab)
command -v cabextract >/dev/null 2>&1 || need+=(cabextract)
command -v uudecode >/dev/null 2>&1 || need+=(sharutils)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)

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

# versitygw (Apache-2.0), an S3-compatible server over a plain folder, for
# the content library's object store tests: built from its Go module at the
# version pinned here and in server/content/s3store/s3test (about a minute
# and a half on two cores, once), into $GOBIN or $GOPATH/bin, where the
# tests look first.
versitygw_module=github.com/versity/versitygw/cmd/versitygw
versitygw_version=v1.8.0
gobin="$(go env GOBIN)"
gobin="${gobin:-$(go env GOPATH | cut -d: -f1)/bin}"
if [ "$(go version -m "$gobin/versitygw" 2>/dev/null | awk '$1 == "mod" {print $3}')" != "$versitygw_version" ]; then
  echo "building versitygw $versitygw_version into $gobin"
  GOBIN="$gobin" go install "$versitygw_module@$versitygw_version"
fi

# grpcurl, which the README's examples use and its test runs, pinned.
grpcurl_module=github.com/fullstorydev/grpcurl/cmd/grpcurl
grpcurl_version=v1.9.4
if [ "$(go version -m "$gobin/grpcurl" 2>/dev/null | awk '$1 == "mod" {print $3}')" != "$grpcurl_version" ]; then
  echo "building grpcurl $grpcurl_version into $gobin"
  GOBIN="$gobin" go install "$grpcurl_module@$grpcurl_version"
fi

# Public test cabinets for pkg/cab's reader: libmspack's and cabextract's own
# (valid MSZIP/LZX/Quantum cabinets, multi-part sets, the cabinets of past
# CVEs) and libarchive's (cabinets Microsoft's makecab made, MSZIP and LZX,
# stored uuencoded). They are not in the repository: they are downloaded
# once from Debian's archive, checked against pinned sha256 sums, and their
# cabinets extracted under OSVC_TESTDATA (default ~/.cache/osvc/testdata),
# which the cab tests read; pkg/cab/testdata/README.md lists them.
testdata="${OSVC_TESTDATA:-${XDG_CACHE_HOME:-$HOME/.cache}/osvc/testdata}"
fetch_cabinets() {
  local url=$1 sha=$2 subdir=$3 dest=$4 pattern=${5:-}
  local tarball="$testdata/${url##*/}"
  if [ -f "$testdata/$dest/.complete" ]; then
    return
  fi
  mkdir -p "$testdata"
  if ! echo "$sha  $tarball" | sha256sum -c --status 2>/dev/null; then
    echo "downloading ${url##*/} (test cabinets)"
    curl -fsSL --retry 3 -o "$tarball.partial" "$url"
    if ! echo "$sha  $tarball.partial" | sha256sum -c --status; then
      echo "${url##*/} does not have the pinned sha256 $sha: not using it" >&2
      rm -f "$tarball.partial"
      exit 1
    fi
    mv "$tarball.partial" "$tarball"
  fi
  rm -rf "$testdata/$dest" "$testdata/$dest.partial"
  mkdir -p "$testdata/$dest.partial"
  local strip
  strip="$(tr -cd / <<<"$subdir" | wc -c)"
  if [ -z "$pattern" ]; then
    tar -xf "$tarball" -C "$testdata/$dest.partial" --strip-components="$strip" "$subdir"
  else
    # A pattern picks uuencoded cabinets out of a larger folder: decode them.
    tar -xf "$tarball" -C "$testdata/$dest.partial" --strip-components="$strip" --wildcards "$subdir$pattern"
    for uu in "$testdata/$dest.partial"/*.uu; do
      (cd "$testdata/$dest.partial" && uudecode -o "$(basename "$uu" .uu)" "$(basename "$uu")" && rm "$(basename "$uu")")
    done
  fi
  touch "$testdata/$dest.partial/.complete"
  mv "$testdata/$dest.partial" "$testdata/$dest"
}
fetch_cabinets http://deb.debian.org/debian/pool/main/libm/libmspack/libmspack_0.11.orig.tar.gz \
  70dd1fb2f0aecc36791b71a1e1840e62173079eadaa081192d1c323a0eeea21b \
  libmspack-0.11alpha/test/test_files/cabd/ libmspack-cabd
fetch_cabinets http://deb.debian.org/debian/pool/main/c/cabextract/cabextract_1.11.orig.tar.gz \
  b5546db1155e4c718ff3d4b278573604f30dd64c3c5bfd4657cd089b823a3ac6 \
  cabextract-1.11/test/ cabextract-test
fetch_cabinets http://deb.debian.org/debian/pool/main/liba/libarchive/libarchive_3.6.2.orig.tar.xz \
  9e2c1b80d5fbe59b61308fdfab6c79b5021d7ff4ff2489fb12daf0a96a83551d \
  libarchive-3.6.2/libarchive/test/ libarchive-cab 'test_*cab*.uu'

if [ ! -e /dev/fuse ]; then
  echo "/dev/fuse is missing: the wimlib engine mounts images through FUSE; load the fuse module (modprobe fuse) or run with FUSE access" >&2
  exit 1
fi
