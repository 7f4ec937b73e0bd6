#!/usr/bin/env bash
# Compares Slipway's built-in router with nginx and HAProxy, each as a keep-alive reverse
# proxy in front of the same tiny app, with wrk, at several concurrencies: over plain HTTP,
# and over HTTPS (TLS terminated by the proxy, all three with the same certificate, clients
# kept alive). Everything listens on 127.0.0.1 and everything this script starts is stopped
# when it exits.
#
# Run:   bench/router.sh            (as root, or with nginx, haproxy and wrk installed)
#
# Settings (environment):
#   ROUTER_BENCH_BIN  the router-bench binary to use as it is; when unset, BUILD_CMD
#                     builds DEFAULT_BIN and that is used
#   BASELINE_BIN      another router-bench binary (say, built from the previous commit) to
#                     run beside the others as "baseline", so a change to the router is
#                     measured before and after in the same run
#   ROUNDS=3          measured runs per proxy and concurrency, rotating which goes first
#   DURATION=10       seconds per measured run (after a WARMUP=2 second run)
#   CONCURRENCY="50 1000"  wrk connections (keep-alive), one set of rounds each
#   BODY_BYTES=6      length of the app's answer ("hello\n", padded with dots)
#   PROXY_WORKERS=1   nginx worker_processes, HAProxy nbthread, router tokio worker threads
#   PROXY_CPU=0, LOAD_CPU=1   CPU pinning, see below
#   SCHEMES="http https"      which sets to run
#
# Fairness, and why the pinning: this is meant for a 2-core machine where wrk, the proxy
# and the app all share the CPUs. Left to the scheduler, they fight over two cores and the
# result mostly measures that fight. So the proxy under test gets one core to itself
# (PROXY_CPU) and the app and wrk share the other (LOAD_CPU), both with one thread. Every
# proxy gets the same budget: nginx runs `worker_processes 1` (its master process sleeps),
# HAProxy `nbthread 1`, the router one tokio worker thread. Each is set up as a reverse
# proxy normally is for this job, with connections to the app kept alive and reused:
# nginx with an upstream `keepalive` pool at least as large as the largest concurrency (a
# smaller pool closes and reopens app connections under load: at 1,000 connections the
# usual 64 made nginx look 2.2x slower), HTTP/1.1, `Connection ""` and `keepalive_requests`
# high on both sides; HAProxy with `http-reuse always` and room in its idle pool for an app
# connection per client connection. Host and X-Forwarded-For are passed
# on as the router does, and access logs are off.
#
# Besides req/s and p99 the script prints each proxy's CPU time per request (user +
# system, from /proc): on a machine shared with other work, throughput and tail latency
# mostly measure who else is running, while CPU per request barely moves. Compare medians,
# and rerun if the load average printed at the start and the end is high.
set -euo pipefail

say() { printf '%s\n' "$*" >&2; }
die() { say "router.sh: $*"; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
BUILD_CMD=${BUILD_CMD:-cargo build --release --quiet --manifest-path $here/../Cargo.toml -p slipway --example router-bench}
DEFAULT_BIN=$here/../target/release/examples/router-bench
ROUTER_BENCH_BIN=${ROUTER_BENCH_BIN:-}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-50 1000}
BODY_BYTES=${BODY_BYTES:-6}
PROXY_WORKERS=${PROXY_WORKERS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND_PORT=${BACKEND_PORT:-18090}
ROUTER_PORT=${ROUTER_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18092}
HAPROXY_PORT=${HAPROXY_PORT:-18093}
BASELINE_PORT=${BASELINE_PORT:-18094}
ROUTER_TLS_PORT=${ROUTER_TLS_PORT:-18095}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18096}
HAPROXY_TLS_PORT=${HAPROXY_TLS_PORT:-18097}
SCHEMES=${SCHEMES:-http https}
BASELINE_BIN=${BASELINE_BIN:-}
max_connections=0
for c in $CONCURRENCY; do ((c > max_connections)) && max_connections=$c; done
# wrk, the proxy and the app each hold a socket per connection, the proxy two.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) > 2 * max_connections + 64)) || die "open-files limit $(ulimit -n) is too low for $max_connections connections"

# --- tools --------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "please install ${missing[*]} (apt-get install -y ${missing[*]})"
    say "installing ${missing[*]}"
    # Keep the packages' init scripts from starting a system nginx or HAProxy.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    installed=0
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || installed=$?
    if [[ -n $made_policy ]]; then rm -f "$policy"; fi
    ((installed == 0)) || die "could not install ${missing[*]}"
fi
command -v taskset >/dev/null || die "taskset (util-linux) is needed for CPU pinning"

if [[ -z $ROUTER_BENCH_BIN ]]; then
    say "building router-bench: $BUILD_CMD"
    $BUILD_CMD
    ROUTER_BENCH_BIN=$DEFAULT_BIN
fi
[[ -x $ROUTER_BENCH_BIN ]] || die "no router-bench binary at $ROUTER_BENCH_BIN"
[[ -z $BASELINE_BIN || -x $BASELINE_BIN ]] || die "no router-bench binary at BASELINE_BIN=$BASELINE_BIN"

# --- processes ----------------------------------------------------------------------
work=$(mktemp -d /tmp/router-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$BACKEND_PORT" "$ROUTER_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$BASELINE_PORT" \
    "$ROUTER_TLS_PORT" "$NGINX_TLS_PORT" "$HAPROXY_TLS_PORT"; do
    port_open "$port" && die "port $port is already in use (set BACKEND_PORT, ROUTER_PORT, NGINX_PORT, HAPROXY_PORT, BASELINE_PORT, ROUTER_TLS_PORT, NGINX_TLS_PORT, HAPROXY_TLS_PORT)"
done

# One certificate (ECDSA P-256, from a throwaway CA) for every proxy's HTTPS.
sh "$here/../tests/tls/issue.sh" "$work" bench.test
cert=$work/bench.test.pem
key=$work/bench.test.key
cat "$cert" "$key" >"$work/haproxy.pem"

# Answers one GET over a fresh connection, to check a proxy works before timing it.
probe() {
    local answer
    answer=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1
        printf 'GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
        cat <&3") || return 1
    [[ $answer == *hello* ]]
}
probe_tls() {
    [[ $(curl -sk --max-time 3 "https://127.0.0.1:$1/") == *hello* ]]
}
wait_for() {
    for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.05; done
    die "nothing listens on port $1 (logs in $work)"
}

BENCH_BODY_BYTES=$BODY_BYTES BENCH_THREADS=1 taskset -c "$LOAD_CPU" "$ROUTER_BENCH_BIN" backend "127.0.0.1:$BACKEND_PORT" 2>"$work/backend.log" &
pids+=($!)
wait_for "$BACKEND_PORT"

BENCH_THREADS=$PROXY_WORKERS taskset -c "$PROXY_CPU" "$ROUTER_BENCH_BIN" router \
    "127.0.0.1:$ROUTER_PORT" "127.0.0.1:$BACKEND_PORT" 2>"$work/router.log" &
pids+=($!)
router_pid=$!
BENCH_THREADS=$PROXY_WORKERS taskset -c "$PROXY_CPU" "$ROUTER_BENCH_BIN" router \
    "127.0.0.1:$ROUTER_TLS_PORT" "127.0.0.1:$BACKEND_PORT" "$cert" "$key" 2>"$work/router-tls.log" &
pids+=($!)
router_tls_pid=$!
if [[ -n $BASELINE_BIN ]]; then
    BENCH_THREADS=$PROXY_WORKERS taskset -c "$PROXY_CPU" "$BASELINE_BIN" router \
        "127.0.0.1:$BASELINE_PORT" "127.0.0.1:$BACKEND_PORT" 2>"$work/baseline.log" &
    pids+=($!)
    baseline_pid=$!
fi

mkdir -p "$work/nginx"
# The same proxying on the plain and the HTTPS server (\$scheme says which to the app).
nginx_location='location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }'

cat >"$work/nginx.conf" <<EOF
worker_processes $PROXY_WORKERS;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
worker_rlimit_nofile $((2 * max_connections + 1024));
events { worker_connections $((2 * max_connections + 512)); }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream app {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive $max_connections;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        $nginx_location
    }
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:10m;
        $nginx_location
    }
}
EOF
taskset -c "$PROXY_CPU" nginx -p "$work" -c "$work/nginx.conf" 2>"$work/nginx.log" &
pids+=($!)
nginx_pid=$!

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread $PROXY_WORKERS
    maxconn $((2 * max_connections + 512))
    # HAProxy stops keeping idle app connections once they hold a quarter of its file
    # descriptors (tune.pool-high-fd-ratio 25): at 1,000 connections that closed and reopened
    # most of them, 16k req/s against 38k with room for one per client connection.
    tune.pool-high-fd-ratio 90
    tune.pool-low-fd-ratio 80
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option forwardfor
    http-reuse always
frontend web
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend app
frontend web-tls
    bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $work/haproxy.pem
    http-request set-header X-Forwarded-Proto https
    default_backend app
backend app
    server app 127.0.0.1:$BACKEND_PORT maxconn $((2 * max_connections))
EOF
taskset -c "$PROXY_CPU" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!

wait_for "$ROUTER_PORT"
wait_for "$NGINX_PORT"
wait_for "$HAPROXY_PORT"
probe "$ROUTER_PORT" || die "the router does not answer (see $work/router.log)"
probe "$NGINX_PORT" || die "nginx does not answer (see $work/nginx-error.log)"
probe "$HAPROXY_PORT" || die "HAProxy does not answer (see $work/haproxy.log)"
for port in "$ROUTER_TLS_PORT" "$NGINX_TLS_PORT" "$HAPROXY_TLS_PORT"; do
    wait_for "$port"
    probe_tls "$port" || die "nothing answers HTTPS on port $port (logs in $work)"
done
if [[ -n $BASELINE_BIN ]]; then
    wait_for "$BASELINE_PORT"
    probe "$BASELINE_PORT" || die "the baseline router does not answer (see $work/baseline.log)"
fi
# nginx's workers are children of its master; the router is one process.
nginx_pids="$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')"

# --- measuring ----------------------------------------------------------------------
# CPU time (user + system) of the given processes so far, in clock ticks.
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo "$total"
}

# Prints "REQ_PER_SEC P99_MICROS CPU_MICROS_PER_REQUEST BAD" for one wrk run against
# `url` with `connections`, charging the CPU time of the remaining arguments (pids); BAD counts socket
# errors and non-2xx/3xx answers, which must stay 0.
run_wrk() {
    local url=$1 seconds=$2 connections=$3 out before after
    shift 3
    before=$(cpu_ticks "$@")
    out=$(timeout $((seconds + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$connections" -d"${seconds}s" --latency "$url") || die "wrk failed"
    after=$(cpu_ticks "$@")
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        function micros(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return v * 1000
            if (v ~ /m$/) return v * 60000000
            if (v ~ /s$/) return v * 1000000
            return v + 0
        }
        /Requests\/sec:/ { rps = $2 }
        / requests in / { requests = $1 }
        $1 == "99%" { p99 = micros($2) }
        /Non-2xx or 3xx responses:/ { bad += $NF }
        /Socket errors:/ { gsub(/,/, ""); bad += $4 + $6 + $8 + $10 }
        END { printf "%.0f %.0f %.2f %d\n", rps, p99, ticks * 1000000 / hz / requests, bad }
    ' <<<"$out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

say "cpus: $(nproc); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
say "$(nginx -v 2>&1); $(haproxy -v 2>&1 | head -1); $(wrk -v 2>&1 | head -1)"
say "wrk -t1 -d${DURATION}s on cpu $LOAD_CPU; proxies on cpu $PROXY_CPU with $PROXY_WORKERS worker(s); app on cpu $LOAD_CPU answering $BODY_BYTES bytes"
# Each proxy, and the pairs compared at the end (router first).
proxies=()
pairs=()
if [[ " $SCHEMES " == *" http "* ]]; then
    proxies+=(router nginx haproxy)
    pairs+=("router nginx" "router haproxy")
    if [[ -n $BASELINE_BIN ]]; then
        proxies+=(baseline)
        pairs+=("router baseline")
    fi
fi
if [[ " $SCHEMES " == *" https "* ]]; then
    proxies+=(router-https nginx-https haproxy-https)
    pairs+=("router-https nginx-https" "router-https haproxy-https")
fi
((${#proxies[@]})) || die "SCHEMES=\"$SCHEMES\" names neither http nor https"
bad_total=0
for connections in $CONCURRENCY; do
    say ""
    say "$connections connections"
    printf '%-6s %-14s %10s %9s %12s %4s\n' round proxy req/s p99_us cpu_us/req bad
    for proxy in "${proxies[@]}"; do : >"$work/$proxy-$connections.txt"; done
    for round in $(seq "$ROUNDS"); do
        # Rotate who goes first, so no proxy always runs right after the same other one.
        first=$(((round - 1) % ${#proxies[@]}))
        order=("${proxies[@]:first}" "${proxies[@]:0:first}")
        for proxy in "${order[@]}"; do
            case $proxy in
                router) url=http://127.0.0.1:$ROUTER_PORT/ procs=$router_pid ;;
                nginx) url=http://127.0.0.1:$NGINX_PORT/ procs=$nginx_pids ;;
                haproxy) url=http://127.0.0.1:$HAPROXY_PORT/ procs=$haproxy_pid ;;
                baseline) url=http://127.0.0.1:$BASELINE_PORT/ procs=$baseline_pid ;;
                router-https) url=https://127.0.0.1:$ROUTER_TLS_PORT/ procs=$router_tls_pid ;;
                nginx-https) url=https://127.0.0.1:$NGINX_TLS_PORT/ procs=$nginx_pids ;;
                haproxy-https) url=https://127.0.0.1:$HAPROXY_TLS_PORT/ procs=$haproxy_pid ;;
            esac
            # shellcheck disable=SC2086 # procs is a list of pids
            run_wrk "$url" "$WARMUP" "$connections" $procs >/dev/null
            # shellcheck disable=SC2086
            read -r rps p99 cpu bad < <(run_wrk "$url" "$DURATION" "$connections" $procs)
            printf '%-6s %-14s %10s %9s %12s %4s\n' "$round" "$proxy" "$rps" "$p99" "$cpu" "$bad"
            echo "$rps $p99 $cpu" >>"$work/$proxy-$connections.txt"
            bad_total=$((bad_total + bad))
        done
    done
done

# The median of column `2` of the runs of proxy `1` at the current concurrency.
column() { cut -d' ' -f"$2" "$work/$1-$connections.txt" | median; }

say ""
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
for connections in $CONCURRENCY; do
    for proxy in "${proxies[@]}"; do
        echo "median at $connections connections, $proxy: $(column "$proxy" 1) req/s, p99 $(column "$proxy" 2) us, $(column "$proxy" 3) us CPU/request"
    done
    for pair in "${pairs[@]}"; do
        read -r mine peer <<<"$pair"
        awk -v c="$connections" -v m="$mine" -v p="$peer" \
            -v r="$(column "$mine" 1)" -v n="$(column "$peer" 1)" \
            -v rp="$(column "$mine" 2)" -v np="$(column "$peer" 2)" \
            -v rc="$(column "$mine" 3)" -v nc="$(column "$peer" 3)" 'BEGIN {
            printf "%s / %s at %d connections: %.2fx req/s; p99 %.2fx; CPU per request %.2fx\n", m, p, c, r / n, rp / np, rc / nc
        }'
    done
done
((bad_total == 0)) || die "$bad_total failed requests (socket errors or non-2xx answers)"
