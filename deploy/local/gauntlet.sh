#!/usr/bin/env bash
# The fault gauntlet at full size (the test suite runs a bounded version):
# every fault (error before, lost reply after, SIGKILL before and after) at
# every step of every operation's commits, at the first and the last time the
# operation reaches it; 100 SIGKILLs of ingest, 50 of the hourly job and 30 of
# a long backfill; and a soak of FIRN_SOAK_SECS seconds (default an hour)
# with 2% injected storage faults. Prints the MEASURE lines the tests log.
#
#   deploy/local/gauntlet.sh                 # everything
#   deploy/local/gauntlet.sh storms          # only tests whose name matches
#   FIRN_GAUNTLET_SEED=42 deploy/local/gauntlet.sh storms   # repeat a kill schedule
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
deploy/local/install-tansu.sh
deploy/local/install-readers.sh
export FIRN_PYTHON=${FIRN_PYTHON:-$PWD/target/venv/bin/python}
export FIRN_GAUNTLET=full
export FIRN_SOAK_SECS=${FIRN_SOAK_SECS:-3600}
filter="gauntlet::${1:-}"
log=target/gauntlet.log
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --test e2e --no-fail-fast --no-capture "$filter" 2>&1 | tee "$log"
else
  cargo test --test e2e --no-fail-fast "$filter" -- --nocapture 2>&1 | tee "$log"
fi
echo
echo "figures (from $log):"
grep -a "MEASURE" "$log" || true
