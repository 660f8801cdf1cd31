#!/bin/sh
# Compiles every ```cpp block of the README as a translation unit of its own, with the
# project's warning flags: the README's API examples must compile.
#   compile_examples.sh <c++> <README.md> <compiler flags...>
cxx=$1 readme=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk -v dir="$tmp" '
  /^```cpp[ \t]*$/ { n++; file = sprintf("%s/example%02d.cpp", dir, n); inside = 1; next }
  /^```/           { inside = 0; next }
  inside           { print > file }
' "$readme"
count=$(ls "$tmp" | wc -l)
[ "$count" -gt 0 ] || { echo "no \`\`\`cpp block found in $readme"; exit 1; }
status=0
for f in "$tmp"/*.cpp; do
  if "$cxx" -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror "$@" "$f"; then
    echo "compiles: README block $(basename "$f" .cpp)"
  else
    echo "does not compile: README block $(basename "$f" .cpp):"; cat -n "$f"; status=1
  fi
done
exit $status
