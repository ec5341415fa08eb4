#!/usr/bin/env bash
# Fails (exit 1, listing them) when pytest's "-rs" log names a skip that no regular expression of
# .ci/allowed_skips.txt matches: a skipped test proves nothing. Usage: .ci/check_skips.sh LOG
set -euo pipefail
log="$1"
allowed="$(dirname "$0")/allowed_skips.txt"
bad=$(grep -E '^SKIPPED' "$log" | grep -v -E -f <(grep -v -E '^(#|$)' "$allowed") || true)
if [ -n "$bad" ]; then
  echo "skips not on .ci/allowed_skips.txt:" >&2
  echo "$bad" >&2
  exit 1
fi
