#!/usr/bin/env bash
# Run the whole test suite (the README's test command). Fails when no test is collected.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
