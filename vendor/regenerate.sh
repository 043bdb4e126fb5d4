#!/usr/bin/env bash
# Re-creates each vendored crate from its crates.io source plus the patches kept for it:
# vendor/patches/<crate>-<version>/*.patch, applied in name order, give vendor/<crate>.
#
#   vendor/regenerate.sh           rewrite vendor/<crate> from source + patches
#   vendor/regenerate.sh --check   fail (and show the difference) if any vendor/<crate> is not
#                                  exactly source + patches (the `lint` suite runs this)
#
# The source is the .crate cargo downloads: the registry cache (~/.cargo/registry) if it is
# there, else `cargo fetch` of a throwaway manifest that asks for exactly that version.
# To move a crate to a new version: rename its patch directory, run this, fix what no longer
# applies (in a scratch git checkout of the new source), and update vendor/README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Prints the path of the unpacked crate `$1` version `$2`, downloading it if need be.
source_of() {
  local name=$1 version=$2 crate src
  crate=$(ls "$CARGO_HOME"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -1 || true)
  if [ -z "$crate" ]; then
    mkdir -p "$work/fetch-$name/src"
    printf '[package]\nname = "vendor-fetch"\nversion = "0.0.0"\nedition = "2021"\n[workspace]\n[dependencies]\n%s = "=%s"\n' \
      "$name" "$version" >"$work/fetch-$name/Cargo.toml"
    : >"$work/fetch-$name/src/lib.rs"
    (cd "$work/fetch-$name" && cargo fetch -q) >&2
    crate=$(ls "$CARGO_HOME"/registry/cache/*/"$name-$version.crate" | head -1)
  fi
  # Unpacked here rather than taken from registry/src, which cargo may have pruned or touched.
  src="$work/src-$name"
  mkdir -p "$src"
  tar -xzf "$crate" -C "$src"
  echo "$src/$name-$version"
}

status=0
for dir in "$ROOT"/vendor/patches/*/; do
  id=$(basename "$dir")           # e.g. engineioxide-0.17.9
  name=${id%-*}
  version=${id##*-}
  src=$(source_of "$name" "$version")
  out="$work/out-$name"
  cp -a "$src" "$out"
  for p in "$dir"*.patch; do
    if ! patch -d "$out" -p1 --quiet --forward --no-backup-if-mismatch <"$p" >"$work/patch.log" 2>&1; then
      cat "$work/patch.log" >&2
      echo "vendor: $(basename "$p") does not apply to $id" >&2
      exit 1
    fi
  done
  if [ $CHECK = 1 ]; then
    if ! diff -r "$out" "$ROOT/vendor/$name" >"$work/diff.log"; then
      echo "vendor/$name differs from $id + vendor/patches/$id:" >&2
      head -40 "$work/diff.log" >&2
      status=1
    fi
  else
    rm -rf "$ROOT/vendor/$name"
    cp -a "$out" "$ROOT/vendor/$name"
    echo "vendor/$name = $id + $(ls "$dir"*.patch | wc -l) patch(es)"
  fi
done
if [ $CHECK = 1 ] && [ $status = 0 ]; then
  echo "vendor: every crate equals its crates.io source plus its patches"
fi
exit $status
