#!/usr/bin/env bash
# The authoring guide (docs/authoring.md), followed from a fresh clone in each language, timed:
# from nothing to an uploaded strategy that deploys hello. For each language it runs the
# guide's commands in order — `slipway new strategy`, the project's build, `slipway test`,
# `slipway module push`, `slipway deploy` of hello with the new strategy — and prints the
# time of each step and the total.
#
# Excluded, as the guide's goal says: the first build of the toolchains (slipway and hello,
# rustup's wasm32-wasip2 target, componentize-py, Node.js, clang). Included: everything a new
# project builds or downloads itself (the Rust project's crates, the JavaScript project's
# `npm ci`). Reading the guide is not timed: this is the machine's part.
#
#   bench/authoring-from-zero.sh [LANG...]        (default: rust python js c)
#   SLIPWAY=target/debug/slipway bench/authoring-from-zero.sh c
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SLIPWAY=$(realpath "${SLIPWAY:-$root/target/release/slipway}")
HELLO=$(realpath "${HELLO:-$root/target/release/hello}")
[[ -x $SLIPWAY && -x $HELLO ]] || {
    echo "build first: cargo build --release -p slipway -p hello" >&2
    exit 2
}
langs=("$@")
((${#langs[@]})) || langs=(rust python js c)

work=$(mktemp -d /tmp/slipway-from-zero.XXXX)
server=
cleanup() {
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

git clone -q "$root" "$work/clone"
cd "$work/clone"
api=127.0.0.1:$((20000 + RANDOM % 10000))
port=$((30000 + RANDOM % 10000))
export SLIPWAY_SERVER=http://$api SLIPWAY_CACHE_DIR=$work/cache
sed -e "s|127.0.0.1:8080|127.0.0.1:$port|" -e "s|target/release/hello|$HELLO|" \
    examples/hello/slipway.toml >"$work/hello.toml"
"$SLIPWAY" serve --data-dir "$work/data" --listen "$api" --deploy "$work/hello.toml" \
    >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 300); do
    curl -sf "127.0.0.1:$port" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "127.0.0.1:$port" >/dev/null || {
    cat "$work/serve.log"
    exit 1
}
export SLIPWAY_TOKEN=$(cat "$work/data/admin.token")
slipway() { (cd "$work/clone" && "$SLIPWAY" "$@"); }
# hello's first rollout finishes (its soak) before the first deploy.
for _ in $(seq 600); do
    slipway status hello --output json | grep -q '"running_rollout": *null' && break
    sleep 0.1
done

step_start=0
step() {
    local now
    now=$(date +%s.%N)
    if [[ $step_start != 0 ]]; then
        printf '    %-8s %6.1f s\n' "$current" "$(echo "$now - $step_start" | bc)"
    fi
    current=$1
    step_start=$now
}

for lang in "${langs[@]}"; do
    name=from-zero-$lang
    dir=$work/$name
    echo "$lang:"
    started=$(date +%s.%N)
    step_start=0
    step new
    slipway new strategy "$name" --lang "$lang" --dir "$dir" >/dev/null
    step build
    case $lang in
    rust) (cd "$dir" && cargo build --release --quiet) ;;
    python) (cd "$dir" && ./build.sh >/dev/null) ;;
    js) (cd "$dir" && npm ci --no-audit --no-fund --silent && npm run --silent build >/dev/null) ;;
    c) (cd "$dir" && make --quiet >/dev/null) ;;
    esac
    wasm=$(sed -n 's/^strategy = "\(.*\)"$/\1/p' "$dir/scenarios.toml")
    step test
    slipway test "$dir/scenarios.toml" >/dev/null
    step push
    slipway module push "$dir/$wasm" --name "$name" >/dev/null
    step deploy
    sed -e "s|builtin:rolling|$name|" -e "s|VERSION = \"v1\"|VERSION = \"$lang\"|" \
        "$work/hello.toml" >"$work/hello-$lang.toml"
    slipway deploy "$work/hello-$lang.toml" >/dev/null
    curl -sf "127.0.0.1:$port" | grep -q "hello from $lang"
    step end
    printf '    %-8s %6.1f s\n' total "$(echo "$(date +%s.%N) - $started" | bc)"
done
