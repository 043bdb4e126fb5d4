#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a number of executions, then prints per target:
# executions, exec/s, coverage (libFuzzer's cov: and ft: from the final stats line), corpus size
# and findings (crash/timeout/oom files). Exits non-zero if any target found something. Every
# run starts by replaying fuzz/corpus-seeds/<target> and fuzz/regressions/<target>.
#
#   fuzz/run.sh [RUNS] [TARGET...]        RUNS: executions per target (default 10000000)
#   FUZZ_TARGETS="classify config_parse" fuzz/run.sh 1000000
#   fuzz/run.sh --make-seeds              regenerate fuzz/corpus-seeds/ (see README.md)
#
# Works on stable Rust (cargo-fuzz with --sanitizer none needs no nightly flag; set
# RUSTC_BOOTSTRAP=1 yourself only if an older cargo-fuzz asks for -Z flags). Needs cargo-fuzz
# (`cargo install cargo-fuzz`) and a C++ compiler (libfuzzer-sys builds libFuzzer).
# Everything runs under `nice -n ${FUZZ_NICE:-19}`; builds go to fuzz/target, the growing corpus
# to fuzz/corpus/<target>, findings to fuzz/artifacts/<target>/ (all git-ignored).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
ALL_TARGETS="classify session_cookie session_record assertion_verify config_parse"
NICE=(nice -n "${FUZZ_NICE:-19}")
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="$here/target/$TRIPLE/release"

build() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz (crates.io)"
        "${NICE[@]}" cargo install --locked --version 0.13.2 cargo-fuzz # the version measured here
    fi
    echo "== building fuzz targets (cargo fuzz build --sanitizer none, stable; fuzz/target)"
    "${NICE[@]}" cargo fuzz build --sanitizer none
    for t in $ALL_TARGETS; do
        [[ -x "$BIN_DIR/$t" ]] || { echo "build failed: no $BIN_DIR/$t" >&2; exit 2; }
    done
}

if [[ "${1:-}" == "--make-seeds" ]]; then
    build
    out="$here/corpus-seeds"
    # Seeds that need the real encoders (signed tokens, MessagePack records) come from the
    # targets themselves; the rest from gateway/tests/fixtures (real express-session,
    # connect-redis and Passport output) and the repo's example configs.
    for t in assertion_verify session_record; do
        mkdir -p "$out/$t"
        FUZZ_WRITE_SEEDS="$out" "$BIN_DIR/$t" -runs=0 "$out/$t" >/dev/null 2>&1
    done
    FIXTURES=${FIXTURES:-$here/../gateway/tests/fixtures} python3 "$here/make_seeds.py" "$out"
    mkdir -p "$out/config_parse"
    for f in ../config/gateway.toml ../config/compose/gateway.toml; do
        [[ -f $f ]] && cp "$f" "$out/config_parse/$(echo "${f#../}" | tr / -)"
    done
    find "$out" -type f | sort
    exit 0
fi

RUNS=${1:-10000000}
shift || true
TARGETS=${*:-${FUZZ_TARGETS:-$ALL_TARGETS}}
build

summary=()
failed=0
for t in $TARGETS; do
    corpus="$here/corpus/$t"
    artifacts="$here/artifacts/$t"
    mkdir -p "$corpus" "$artifacts" "$here/corpus-seeds/$t"
    marker=$(mktemp)
    log="$here/artifacts/$t.log"
    echo "== $t: $RUNS executions (log: fuzz/artifacts/$t.log)"
    start=$(date +%s%N)
    set +e
    "${NICE[@]}" "$BIN_DIR/$t" -runs="$RUNS" -print_final_stats=1 -timeout=10 \
        -artifact_prefix="$artifacts/" "$corpus" "$here/corpus-seeds/$t" \
        $([[ -d "$here/regressions/$t" ]] && echo "$here/regressions/$t") >"$log" 2>&1
    rc=$?
    set -e
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    stats=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$stats")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$stats")
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log" | tail -1)
    [[ -n $execs ]] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$stats")
    # libFuzzer's own average rounds the time to whole seconds; this one uses milliseconds.
    rate=$(( ${execs:-0} * 1000 / (ms > 0 ? ms : 1) ))
    files=$(find "$corpus" -type f | wc -l)
    new=$(find "$artifacts" -type f -newer "$marker")
    rm -f "$marker"
    found=$(grep -c . <<<"$new" || true)
    if (( rc != 0 || found > 0 )); then
        failed=1
        grep -E 'panicked at|^SUMMARY|^==[0-9]+== ERROR' -A2 "$log" | head -8 || true
        echo "exit status $rc; new findings:" ${new:-none}
    fi
    summary+=("$(printf '%-17s %12s %9s %6s %7s %8s %9s %5s' "$t" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "$files" "$found" "$((ms / 1000)).$((ms % 1000 / 100))s")")
done

echo
printf '%-17s %12s %9s %6s %7s %8s %9s %5s\n' target executions exec/s cov ft corpus findings time
printf '%s\n' "${summary[@]}"
if (( failed )); then
    echo "findings: see fuzz/artifacts/<target>/ and README.md (reproduce a crash)" >&2
    exit 1
fi
