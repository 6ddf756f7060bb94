#!/usr/bin/env bash
# Install mbias with its test extras, the browser the review-app test drives, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -c constraints.txt -e ".[dev,llamacpp]"
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium unavailable: browser tests will skip"
fi
python3 -m pytest -q "$@"
