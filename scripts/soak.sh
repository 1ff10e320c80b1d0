#!/usr/bin/env bash
# The reliability suites, longer than CI runs them: 500 crash rounds and 8 racing
# processes for 2 minutes (override with XC_CRASH_ROUNDS / XC_RACE_SECS).
set -euo pipefail
cd "$(dirname "$0")/.."
export XC_CRASH_ROUNDS="${XC_CRASH_ROUNDS:-500}" XC_RACE_SECS="${XC_RACE_SECS:-120}"
cargo test --test reliability -- --nocapture --test-threads 1
