#!/usr/bin/env bash
# Install what socat-monitor needs (scripts/setup.sh), then run the whole test
# suite: unit tests and the integration tests with real BPF, socat, nftables
# (inside test network namespaces) and a real Elasticsearch. Extra arguments
# go to pytest, e.g. scripts/test.sh -k policy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
