#!/usr/bin/env bash
# The deploy job of examples/ci: what github-actions.yml and gitlab-ci.yml run, and what
# tests/all/ci_example.rs runs against a local runner. Run it from the repository's root.
#
#   1. build the app and install it under RELEASES_DIR/VERSION/ (one directory per version,
#      so that a rollback to an earlier revision runs that revision's binary);
#   2. build the strategy (unless STRATEGY_WASM names one already built) and push it;
#   3. deploy SPEC, with every @VERSION@ in it replaced by VERSION, and follow the rollout:
#      `slipway deploy --output json`, its document kept in OUT_DIR/rollout.json.
#
# It exits as `slipway deploy` does: 0 the rollout succeeded (or the spec was already
# deployed and serving), 1 the rollout failed (rolled back, failed or aborted), 2 the
# request was refused (a token without the deploy scope, an invalid spec, an unknown
# module), the runner could not be reached, or this script is missing a setting; and 3 when
# building or installing failed (nothing was sent to the runner). OUT_DIR/exit-code holds
# the status whatever happened.
#
# Environment (only the first two are required):
#   SLIPWAY_SERVER    the runner's API, e.g. https://deploy.example.com:7070 (read by slipway)
#   SLIPWAY_TOKEN     a token with the deploy scope (read by slipway)
#   SLIPWAY           the slipway CLI (default: slipway on PATH)
#   SPEC              the spec to deploy (default: examples/ci/slipway.toml)
#   VERSION           what @VERSION@ becomes (default: the commit, git rev-parse --short HEAD)
#   BUILD_APP         the shell command that builds the app; empty to skip
#                     (default: cargo build --release --locked -p hello)
#   APP_BINARY        the built binary to install; empty to skip (default: target/release/hello)
#   RELEASES_DIR      where it is installed, as RELEASES_DIR/VERSION/NAME (default:
#                     /srv/hello/releases; the spec's command names the same place)
#   STRATEGY_PACKAGE  the cargo package of the strategy (default: example-strategy-waves)
#   STRATEGY_WASM     a component already built: pushed as it is, nothing is built
#   STRATEGY_NAME     the name it is pushed under, the one the spec's [strategy] module names
#                     (default: waves)
#   RECONNECT         how long `slipway deploy` keeps trying to reach a runner that restarts
#                     while it follows the rollout (default: 60s)
#   OUT_DIR           where rollout.json and exit-code go (default: slipway-out)

set -euo pipefail

OUT_DIR=${OUT_DIR:-slipway-out}
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/rollout.json" "$OUT_DIR/exit-code"
rendered=
finish() {
    local status=$?
    [[ -n $rendered ]] && rm -f "$rendered"
    echo "$status" >"$OUT_DIR/exit-code"
    exit "$status"
}
trap finish EXIT

fail() {
    echo "deploy.sh: $*" >&2
    exit 2
}
build_failed() {
    echo "deploy.sh: $* failed; nothing was deployed" >&2
    exit 3
}

[[ -n ${SLIPWAY_SERVER:-} ]] || fail "set SLIPWAY_SERVER to the runner's API, e.g. http://127.0.0.1:7070"
# Without a token the CLI would fall back to an admin token in ./.slipway: never in CI.
[[ -n ${SLIPWAY_TOKEN:-} ]] || fail "set SLIPWAY_TOKEN to a token with the deploy scope"
export SLIPWAY_SERVER SLIPWAY_TOKEN
SLIPWAY=${SLIPWAY:-slipway}
SPEC=${SPEC:-examples/ci/slipway.toml}
VERSION=${VERSION:-$(git rev-parse --short HEAD 2>/dev/null || true)}
[[ -n $VERSION ]] || fail "set VERSION (not in a git checkout)"
[[ $VERSION =~ ^[A-Za-z0-9._-]+$ ]] || fail "VERSION $VERSION: use letters, digits, '.', '_' and '-'"
BUILD_APP=${BUILD_APP-cargo build --release --locked -p hello}
APP_BINARY=${APP_BINARY-target/release/hello}
RELEASES_DIR=${RELEASES_DIR:-/srv/hello/releases}
STRATEGY_PACKAGE=${STRATEGY_PACKAGE:-example-strategy-waves}
STRATEGY_NAME=${STRATEGY_NAME:-waves}
RECONNECT=${RECONNECT:-60s}
[[ -f $SPEC ]] || fail "no spec at $SPEC"

# 1. The app.
if [[ -n $BUILD_APP ]]; then
    echo "+ $BUILD_APP"
    eval "$BUILD_APP" || build_failed "$BUILD_APP"
fi
if [[ -n $APP_BINARY ]]; then
    release="$RELEASES_DIR/$VERSION"
    echo "+ install $APP_BINARY into $release/"
    install -d "$release" && install -m 0755 "$APP_BINARY" "$release/" || build_failed "installing $APP_BINARY"
fi

# 2. The strategy.
if [[ -z ${STRATEGY_WASM:-} ]]; then
    echo "+ cargo build --release --locked --target wasm32-wasip2 -p $STRATEGY_PACKAGE"
    cargo build --release --locked --target wasm32-wasip2 -p "$STRATEGY_PACKAGE" || build_failed "building the strategy"
    STRATEGY_WASM="target/wasm32-wasip2/release/${STRATEGY_PACKAGE//-/_}.wasm"
fi
"$SLIPWAY" module push "$STRATEGY_WASM" --name "$STRATEGY_NAME"

# 3. The deploy. The spec is rendered beside itself, so that what it names relative to its
# own directory (a pod template) is still found.
spec=$SPEC
if grep -q '@VERSION@' "$SPEC"; then
    rendered=$(mktemp "$(dirname "$SPEC")/.deploy.XXXXXX") || fail "cannot write beside $SPEC"
    sed "s/@VERSION@/$VERSION/g" "$SPEC" >"$rendered" || fail "cannot write $rendered"
    spec=$rendered
fi
echo "+ slipway deploy $SPEC (version $VERSION) --output json --reconnect $RECONNECT"
status=0
"$SLIPWAY" deploy "$spec" --output json --reconnect "$RECONNECT" >"$OUT_DIR/rollout.json" || status=$?

# A spec equal to the app's latest revision starts nothing and exits 0, also when that
# revision's rollout failed (a failed job run again) or it was rolled back from: then it is not
# the one serving, and this fails.
answer=$(head -c 4096 "$OUT_DIR/rollout.json")
if [[ $status == 0 && $answer == '{"result":"unchanged"'* ]]; then
    app=$(sed -n 's/.*"app":"\([^"]*\)".*/\1/p' <<<"$answer")
    revision=$(sed -n 's/.*"revision":\([0-9]*\).*/\1/p' <<<"$answer")
    active=$("$SLIPWAY" status "$app" --output json | sed -n 's/^ *"active_revision": *\([0-9]*\).*/\1/p' | head -n 1)
    if [[ $active != "$revision" ]]; then
        echo "$app: the spec is revision $revision's, which is not serving (active: ${active:-none}):" \
            "its rollout failed or it was rolled back from; deploy a new version, or run" \
            "\`slipway retry $app\` if it failed" >&2
        exit 1
    else
        echo "$app is already at revision $revision (the spec is unchanged)"
    fi
elif command -v jq >/dev/null && [[ -s $OUT_DIR/rollout.json ]]; then
    jq -r '.rollout | "rollout \(.id) of \(.app) revision \(.target): \(.state): \(.summary // "")"' \
        "$OUT_DIR/rollout.json" || true
fi
case $status in
0) echo "deployed $VERSION" ;;
1) echo "the rollout failed (exit 1); its events are in $OUT_DIR/rollout.json" >&2 ;;
*) echo "the deploy was refused or the runner was not reached (exit $status)" >&2 ;;
esac
exit "$status"
