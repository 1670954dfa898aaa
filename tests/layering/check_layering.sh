#!/usr/bin/env bash
# Checks forq's module layering (docs/architecture.md, "Modules") over the
# #include lines of a source tree:
#   - worker/ and common/ include no gRPC or protobuf header (workers see
#     payloads as bytes; common/ is absl-only);
#   - client/ includes nothing from server/ or worker/;
#   - worker/ includes nothing from server/ or client/ (nor client/include/forq/);
#   - common/ includes nothing of forq's outside common/ (its tests may use
#     tests/testing/);
#   - no forq include climbs out with "../".
# Usage: check_layering.sh SOURCE_DIR. Prints each violation as
# file:line: include (rule) and exits 1 if there is any.
set -euo pipefail

root=${1:?usage: check_layering.sh SOURCE_DIR}
cd "$root"

violations=0
scanned=0

# Top-level directories other than common/ (and the generated/installed
# "forq/" include root) that hold forq's own headers.
not_common='(api|worker|server|client|tests|bench|examples|forq)/'
grpc_or_proto='(grpcpp/|grpc\+\+/|grpc/|google/protobuf/|forq/v1/|[^">]*\.pb\.h)'

# check DIR WHAT PATTERN [ALLOW]: reports includes in DIR's .h/.cc files whose
# path matches PATTERN (an ERE on the text after '<' or '"'), unless the line
# also matches ALLOW ("file:line:#include ..." form).
check() {
  local dir=$1 what=$2 pattern=$3 allow=${4:-}
  local hits
  hits=$(grep -rnE --include='*.h' --include='*.cc' \
    "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]${pattern}" "$dir" \
    || true)
  if [ -n "$allow" ] && [ -n "$hits" ]; then
    hits=$(grep -vE "$allow" <<<"$hits" || true)
  fi
  if [ -n "$hits" ]; then
    while IFS= read -r hit; do
      echo "${hit} (${what})"
      violations=$((violations + 1))
    done <<<"$hits"
  fi
}

for dir in common worker client server; do
  if [ ! -d "$dir" ]; then
    echo "check_layering: $root/$dir is missing; wrong SOURCE_DIR?" >&2
    exit 2
  fi
  scanned=$((scanned + $(find "$dir" -name '*.h' -o -name '*.cc' | wc -l)))
done

check worker "worker/ must not include gRPC or protobuf" "$grpc_or_proto"
check common "common/ must not include gRPC or protobuf" "$grpc_or_proto"
check client "client/ must not include server/" 'server/'
check client "client/ must not include worker/" 'worker/'
check worker "worker/ must not include server/ or client/" '(server|client|forq)/'
check common "common/ must include only common/ of forq's code" \
  "$not_common" \
  '^[^:]*_test\.cc:[0-9]+:[[:space:]]*#[[:space:]]*include[[:space:]]*"tests/testing/'
for dir in common worker client server; do
  check "$dir" "includes must not climb out with ../" '[^">]*\.\./'
done

if [ "$violations" -ne 0 ]; then
  echo "check_layering: $violations violation(s) in $scanned files" >&2
  exit 1
fi
echo "check_layering: $scanned files, layering ok"
