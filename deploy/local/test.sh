#!/usr/bin/env bash
# The whole test suite: installs what the tests need when it is missing
# (the tansu broker; PyIceberg, DuckDB and SeaweedFS; the deployment tools:
# promtool, Pushgateway, kubernetes-validate, hadolint), then runs unit and
# end-to-end tests. The end-to-end tests start their own brokers, SeaweedFS
# and Pushgateways on free loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
deploy/local/install-tansu.sh
deploy/local/install-readers.sh
deploy/local/install-deploy-tools.sh
export FIRN_PYTHON=${FIRN_PYTHON:-$PWD/target/venv/bin/python}
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --lib --bins --tests --no-fail-fast
else
  cargo test --lib --bins --tests --no-fail-fast
fi
