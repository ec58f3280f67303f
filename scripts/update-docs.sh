#!/usr/bin/env bash
# Rewrites the generated part of docs/config.md (between its BEGIN and END markers) from
# `diffuse --config-reference`, after a config key, type, default or help text changed. The
# suite's ConfigDocs.DocsFileIsCurrent fails until this has been run.
#   scripts/update-docs.sh            (uses build/diffuse; DIFFUSE=path for another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DIFFUSE:-build/diffuse}
[[ -x $BIN ]] || { echo "update-docs: '$BIN' is not built (scripts/bootstrap.sh)" >&2; exit 2; }
doc=docs/config.md
table=$(mktemp)
trap 'rm -f "$table"' EXIT
"$BIN" --config-reference >"$table"
awk -v table="$table" '
  /^<!-- BEGIN config_reference_markdown\(\) -->$/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
  /^<!-- END config_reference_markdown\(\) -->$/ { skip = 0 }
  !skip { print }' "$doc" >"$doc.tmp"
mv "$doc.tmp" "$doc"
echo "update-docs: rewrote the key table of $doc"
