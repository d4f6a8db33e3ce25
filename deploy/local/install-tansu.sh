#!/usr/bin/env bash
# Install the tansu Kafka-API broker (0.6.0, with its sqlite and memory
# storage engines) unless a tansu binary is already on PATH or in ~/.cargo/bin.
# Building it takes about 20 minutes on 2 cores.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q '0\.6\.0'; then
  exit 0
fi
echo "installing tansu 0.6.0 (cargo install, about 20 minutes on 2 cores)..." >&2
cargo install --locked tansu --version 0.6.0 --features dynostore,libsql
