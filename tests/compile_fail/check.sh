#!/bin/sh
# Passes when compiling $3 FAILS with a message containing $4.  $1: C++ compiler, $2: include dir.
cxx=$1 inc=$2 src=$3 want=$4
out=$("$cxx" -std=c++20 -fsyntax-only -I"$inc" "$src" 2>&1)
if [ $? -eq 0 ]; then echo "compiled, but must not: $src"; exit 1; fi
if ! printf '%s' "$out" | grep -qF "$want"; then
  echo "failed to compile, but without the readable message '$want':"; printf '%s\n' "$out" | head -20; exit 1
fi
echo "refused as it should be: $(printf '%s' "$out" | grep -F "$want" | head -1)"
