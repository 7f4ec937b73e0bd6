#!/bin/sh
# Builds {{wasm}} from app.py with componentize-py 0.25.1
# (`pip install componentize-py==0.25.1`), and a copy of the generated bindings in
# out/bindings for editors. Run from anywhere.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$here/out/bindings"
mkdir -p "$here/out"
cd "$here"
componentize-py -d wit -w {{world}} bindings out/bindings
componentize-py -d wit -w {{world}} componentize app -o {{wasm}}
echo "built $here/{{wasm}}"
