#!/bin/sh
# Writes lzx-sums.txt: the SHA-256 of every member that Debian's cabextract
# extracts from the public LZX test cabinets (see README.md), which the cab
# tests compare the reader's output with, so that they need no cabextract.
# Run it from this folder after deploy/install-deps.sh has fetched them.
set -eu
testdata=${OSVC_TESTDATA:-${XDG_CACHE_HOME:-$HOME/.cache}/osvc/testdata}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for cab in libmspack-cabd/mszip_lzx_qtm.cab libarchive-cab/test_read_format_cab_3.cab libarchive-cab/test_fuzz.cab; do
  cabextract -q -d "$out/$cab" "$testdata/$cab"
done
{
  echo "# $(cabextract --version): sha256  cabinet/member (made by make-lzx-sums.sh)"
  (cd "$out" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | while read -r f; do sha256sum "$f"; done)
} >lzx-sums.txt
