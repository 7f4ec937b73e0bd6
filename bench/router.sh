#!/usr/bin/env bash
# Compares Slipway's built-in router with nginx, each as a keep-alive reverse proxy in
# front of the same tiny app, with wrk. Everything listens on 127.0.0.1 and everything
# this script starts is stopped when it exits.
#
# Run:   bench/router.sh            (as root, or with nginx and wrk already installed)
#
# Settings (environment):
#   ROUTER_BENCH_BIN  the router-bench binary to use as it is; when unset, BUILD_CMD
#                     builds DEFAULT_BIN and that is used
#   ROUNDS=3          measured runs per proxy, alternating which goes first
#   DURATION=10       seconds per measured run (after a WARMUP=2 second run)
#   CONNECTIONS=50    wrk connections (keep-alive)
#   BODY_BYTES=6      length of the app's answer ("hello\n", padded with dots)
#   PROXY_WORKERS=1   nginx worker_processes and router tokio worker threads
#   PROXY_CPU=0, LOAD_CPU=1   CPU pinning, see below
#
# Fairness, and why the pinning: this is meant for a 2-core machine where wrk, the proxy
# and the app all share the CPUs. Left to the scheduler, the three fight over two cores
# and the result mostly measures that fight. So the proxy under test gets one core to
# itself (PROXY_CPU) and the app and wrk share the other (LOAD_CPU), both with one
# thread. Both proxies get exactly the same budget: nginx runs `worker_processes 1` (its
# master process sleeps) and the router runs one tokio worker thread. nginx is set up as
# a reverse proxy normally is: upstream keep-alive (`keepalive 64`, HTTP/1.1,
# `Connection ""`), Host and X-Forwarded-For passed on like the router does, access log
# off.
#
# Besides req/s and p99 the script prints each proxy's CPU time per request (user +
# system, from /proc): on a machine shared with other work, throughput and tail latency
# mostly measure who else is running, while CPU per request barely moves. Compare medians,
# and rerun if the load average printed at the start and the end is high.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BUILD_CMD=${BUILD_CMD:-cargo build --release --quiet --manifest-path $here/../Cargo.toml -p slipway --example router-bench}
DEFAULT_BIN=$here/../target/release/examples/router-bench
ROUTER_BENCH_BIN=${ROUTER_BENCH_BIN:-}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
BODY_BYTES=${BODY_BYTES:-6}
PROXY_WORKERS=${PROXY_WORKERS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND_PORT=${BACKEND_PORT:-18090}
ROUTER_PORT=${ROUTER_PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18092}

say() { printf '%s\n' "$*" >&2; }
die() { say "router.sh: $*"; exit 1; }

# --- tools --------------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "please install ${missing[*]} (apt-get install -y ${missing[*]})"
    say "installing ${missing[*]}"
    # Keep the package's init script from starting a system nginx on port 80.
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
for port in "$BACKEND_PORT" "$ROUTER_PORT" "$NGINX_PORT"; do
    port_open "$port" && die "port $port is already in use (set BACKEND_PORT, ROUTER_PORT, NGINX_PORT)"
done

# Answers one GET over a fresh connection, to check a proxy works before timing it.
probe() {
    local answer
    answer=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1
        printf 'GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
        cat <&3") || return 1
    [[ $answer == *hello* ]]
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

mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<EOF
worker_processes $PROXY_WORKERS;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream app {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
taskset -c "$PROXY_CPU" nginx -p "$work" -c "$work/nginx.conf" 2>"$work/nginx.log" &
pids+=($!)
nginx_pid=$!

wait_for "$ROUTER_PORT"
wait_for "$NGINX_PORT"
probe "$ROUTER_PORT" || die "the router does not answer (see $work/router.log)"
probe "$NGINX_PORT" || die "nginx does not answer (see $work/nginx-error.log)"
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
# `port`, charging the CPU time of the remaining arguments (pids); BAD counts socket
# errors and non-2xx/3xx answers, which must stay 0.
run_wrk() {
    local port=$1 seconds=$2 out before after
    shift 2
    before=$(cpu_ticks "$@")
    out=$(timeout $((seconds + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" --latency "http://127.0.0.1:$port/") || die "wrk failed"
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
say "$(nginx -v 2>&1); $(wrk -v 2>&1 | head -1)"
say "wrk -t1 -c$CONNECTIONS -d${DURATION}s on cpu $LOAD_CPU; proxies on cpu $PROXY_CPU with $PROXY_WORKERS worker(s); app on cpu $LOAD_CPU answering $BODY_BYTES bytes"
printf '%-6s %-7s %10s %9s %12s %4s\n' round proxy req/s p99_us cpu_us/req bad
: >"$work/router.txt"
: >"$work/nginx.txt"
bad_total=0
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order="router nginx"; else order="nginx router"; fi
    for proxy in $order; do
        if [[ $proxy == router ]]; then
            port=$ROUTER_PORT procs=$router_pid
        else
            port=$NGINX_PORT procs=$nginx_pids
        fi
        # shellcheck disable=SC2086 # procs is a list of pids
        run_wrk "$port" "$WARMUP" $procs >/dev/null
        # shellcheck disable=SC2086
        read -r rps p99 cpu bad < <(run_wrk "$port" "$DURATION" $procs)
        printf '%-6s %-7s %10s %9s %12s %4s\n' "$round" "$proxy" "$rps" "$p99" "$cpu" "$bad"
        echo "$rps $p99 $cpu" >>"$work/$proxy.txt"
        bad_total=$((bad_total + bad))
    done
done

router_rps=$(cut -d' ' -f1 "$work/router.txt" | median)
nginx_rps=$(cut -d' ' -f1 "$work/nginx.txt" | median)
router_p99=$(cut -d' ' -f2 "$work/router.txt" | median)
nginx_p99=$(cut -d' ' -f2 "$work/nginx.txt" | median)
router_cpu=$(cut -d' ' -f3 "$work/router.txt" | median)
nginx_cpu=$(cut -d' ' -f3 "$work/nginx.txt" | median)
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median router: $router_rps req/s, p99 ${router_p99} us, ${router_cpu} us CPU/request"
echo "median nginx:  $nginx_rps req/s, p99 ${nginx_p99} us, ${nginx_cpu} us CPU/request"
awk -v r="$router_rps" -v n="$nginx_rps" -v rp="$router_p99" -v np="$nginx_p99" \
    -v rc="$router_cpu" -v nc="$nginx_cpu" 'BEGIN {
    printf "router / nginx: %.2fx req/s; p99 %s us vs %s us (%.2fx); CPU per request %.2fx\n",
        r / n, rp, np, rp / np, rc / nc
}'
((bad_total == 0)) || die "$bad_total failed requests (socket errors or non-2xx answers)"
