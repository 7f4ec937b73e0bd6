#!/bin/sh
# Builds out/strategy.wasm from app.py with componentize-py 0.25.1
# (`pip install componentize-py==0.25.1`). Run from anywhere.
#
# componentize-py generates the `wit_world` bindings itself while it builds; this script
# also writes a copy to out/bindings (ignored by git) for editors and type checkers.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
wit="$here/../../../sdk/wit"
out="$here/out"

rm -rf "$out/bindings"
mkdir -p "$out"
cd "$here"
componentize-py -d "$wit" -w strategy bindings "$out/bindings"
componentize-py -d "$wit" -w strategy componentize app -o "$out/strategy.wasm"
echo "built $out/strategy.wasm"
