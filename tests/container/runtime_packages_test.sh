#!/usr/bin/env bash
# The runtime stage of deploy/Dockerfile installs exactly the Debian packages
# that own forqd's and forq's shared libraries, as `ldd` resolves them on
# this Debian 12 host: none missing, none extra.
#   runtime_packages_test.sh DOCKERFILE FORQD FORQ
set -euo pipefail
dockerfile="$1"
shift

# Packages named in the runtime stage's apt-get install.
declared="$(awk '
  /^FROM / { stage++ }
  stage == 2 && /apt-get install/ { on = 1; next }
  on && /^ *&&/ { on = 0 }
  on { for (i = 1; i <= NF; i++) if ($i != "\\") print $i }
' "$dockerfile" | sort -u)"
[ -n "$declared" ] || { echo "FAIL: no runtime package list in $dockerfile"; exit 1; }

# Every library ldd resolves, as the paths dpkg may have recorded it under
# (usrmerge: /lib and /usr/lib are the same directory).
libs=""
for bin in "$@"; do
  if ldd "$bin" | grep -q "not found"; then
    echo "FAIL: $bin has unresolved libraries:"; ldd "$bin"; exit 1
  fi
  libs+="$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')"$'\n'
done
libs="$(printf '%s' "$libs" | sort -u)"
candidates=()
for lib in $libs; do
  for p in "$lib" "$(readlink -f "$lib")"; do
    candidates+=("$p" "/usr${p#/usr}" "${p#/usr}")
  done
done
# One dpkg call: "package[:arch]: path" for every recorded candidate.
owners="$(dpkg -S "${candidates[@]}" 2>/dev/null | sort -u || true)"
needed=""
for lib in $libs; do
  names="$(printf '%s\n' "$lib" "$(readlink -f "$lib")" | xargs -n1 basename | sort -u)"
  pkg="$(echo "$owners" | awk -F': ' -v names="$names" '
    BEGIN { n = split(names, a, "\n"); for (i = 1; i <= n; i++) want[a[i]] = 1 }
    { f = $2; sub(/.*\//, "", f); if (f in want) print $1 }' |
    sed 's/:.*//; s/,.*//' | sort -u)"
  [ -n "$pkg" ] || { echo "FAIL: no package owns $lib"; exit 1; }
  needed+="$pkg"$'\n'
done
needed="$(printf '%s' "$needed" | sort -u)"

if [ "$declared" != "$needed" ]; then
  echo "FAIL: runtime packages in $dockerfile differ from what ldd needs"
  diff <(echo "$declared") <(echo "$needed") | sed 's/^</  only in Dockerfile:/; s/^>/  only in ldd:/' | grep only || true
  exit 1
fi
echo "OK: $(echo "$declared" | wc -l) runtime packages match ldd of $*:"
echo "$declared" | sed 's/^/  /'
