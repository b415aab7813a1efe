#!/usr/bin/env bash
# gRPC unary benchmark: calls per second and CPU per call, client → server directly and
# through a proxy (HAProxy for reference, then load_balancer), cleartext HTTP/2 on loopback.
#
# Client: h2load (h2c, prior knowledge), each call a POST to /bench.Echo/Unary whose body is
# one gRPC message: the 5-byte prefix (not compressed, length) and an EchoRequest carrying
# PAYLOAD bytes; -c C connections with -m M calls at once on each, -n N calls per measured
# run after a warm-up of N/5. Server: examples/grpc_echo (tonic), SERVERS processes with
# THREADS tokio worker threads each, answering with the payload echoed.
#
# Modes: direct (h2load to the first server only), haproxy (`bind … proto h2`, servers
# `proto h2`, round robin per call), lb (load_balancer, `[pools.default] protocol = "h2"`,
# the servers registered as workers in PostgreSQL). MODES="direct lb" runs a subset.
#
# Layout (needs 2 cores), as in bench/whole-proxy.sh: h2load and the servers on LOAD_CPU, the
# proxy alone on PROXY_CPU. Direct runs on one core; a proxied run has a second one, yet on
# 2 cores its calls/s is far below direct while neither core is saturated (each call crosses
# cores twice more, and the servers get smaller batches), for HAProxy as for load_balancer.
# So calls/s says little here about the proxy; its CPU per call is the figure to compare.
# CPU per call is user+system time over the measured run divided by the calls it
# completed, for the proxy, for all servers together, and for h2load.
#
# h2load counts HTTP statuses only, and a failed gRPC call is an HTTP 200 with a non-zero
# grpc-status in its trailers. So each run is checked twice: one call with curl must end
# with `grpc-status: 0`, and the calls the servers say they answered (grpc_echo prints its
# count on SIGTERM) must equal the calls h2load completed; the difference is the `lost`
# column. Each run's line also shows the calls per server, so per-call balancing shows.
# Every repetition starts every mode afresh (servers and proxy). Prints medians over the
# repetitions, calls/s as a ratio to direct and the proxy's CPU per call as a ratio to
# HAProxy's.
#
# usage: [MODES="direct haproxy lb"] bench/grpc-unary.sh [-r REPS] [-n CALLS] [-c CONNS]
#          [-m STREAMS] [-s SERVERS] [-w THREADS] [-p PAYLOAD]
# needs: h2load (nghttp2-client), haproxy, curl (installed with apt-get if missing),
# PostgreSQL on 127.0.0.1:5432 (user postgres) for lb, and
# `cargo build --release && cargo build --release --example grpc_echo` done.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=3 CALLS=100000 CONNS=32 STREAMS=10 SERVERS=3 THREADS=1 PAYLOAD=16
usage() {
  echo "usage: $0 [-r REPS] [-n CALLS] [-c CONNS] [-m STREAMS] [-s SERVERS] [-w THREADS] [-p PAYLOAD]" >&2
  exit 2
}
while (($#)); do
  case $1 in
    -r) REPS=$2; shift ;;
    -n) CALLS=$2; shift ;;
    -c) CONNS=$2; shift ;;
    -m) STREAMS=$2; shift ;;
    -s) SERVERS=$2; shift ;;
    -w) THREADS=$2; shift ;;
    -p) PAYLOAD=$2; shift ;;
    *) usage ;;
  esac
  shift
done
MODES=${MODES:-direct haproxy lb}
PROXY_CPU=${PROXY_CPU:-1} LOAD_CPU=${LOAD_CPU:-0}
LB=${LB:-$PWD/target/release/load_balancer}
ECHO=${ECHO:-$PWD/target/release/examples/grpc_echo}
[ -x "$ECHO" ] || { echo "build first: cargo build --release --example grpc_echo" >&2; exit 2; }
[[ " $MODES " != *" lb "* || -x $LB ]] || { echo "build first: cargo build --release" >&2; exit 2; }
for tool in h2load haproxy curl; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client haproxy curl >/dev/null; }
done

TMP=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
LISTEN=127.0.0.1:18080 PORTS=()
for i in $(seq "$SERVERS"); do PORTS+=($((50050 + i))); done

# The request: gRPC prefix (flag 0 = not compressed, big-endian length), then EchoRequest
# field 1 (tag 0x0a, wire type 2) with a varint length and the payload.
python3 - "$PAYLOAD" >"$TMP/body.bin" <<'EOF'
import struct, sys
payload = b"x" * int(sys.argv[1])
n, varint = len(payload), b""
while True:
    varint += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
    n >>= 7
    if not n:
        break
msg = b"\x0a" + varint + payload
sys.stdout.buffer.write(b"\x00" + struct.pack(">I", len(msg)) + msg)
EOF
GRPC_HEADERS=(-H "content-type: application/grpc" -H "te: trailers")

grpc_ok() {   # one call to $1 (host:port) with curl; true when the trailers say grpc-status 0
  curl -sv --http2-prior-knowledge --max-time 2 "${GRPC_HEADERS[@]}" --data-binary @"$TMP/body.bin" \
    "http://$1/bench.Echo/Unary" -o /dev/null 2>&1 | tr -d '\r' | grep -qi '^< grpc-status: 0$'
}

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 3s
  timeout client 30s
  timeout server 30s
frontend fe
  bind $LISTEN proto h2
  default_backend be
backend be
  balance roundrobin
  http-reuse always
$(for p in "${PORTS[@]}"; do echo "  server s$p 127.0.0.1:$p proto h2"; done)
EOF

DB=lb_grpc_unary_bench
cat >"$TMP/lb.toml" <<EOF
[database]
url = "postgres://postgres@127.0.0.1:5432/$DB"
[[listeners]]
bind = "$LISTEN"
algorithm = "round_robin"
[pools.default]
protocol = "h2"
EOF
if [[ " $MODES " == *" lb "* ]]; then
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null 2>&1
fi

start_servers() {   # sets SERVER_PIDS; each server's log ends with its call count
  SERVER_PIDS=()
  local p
  for p in "${PORTS[@]}"; do
    taskset -c "$LOAD_CPU" "$ECHO" "127.0.0.1:$p" "$THREADS" 2>"$TMP/server-$p.log" &
    SERVER_PIDS+=($!)
  done
  for p in "${PORTS[@]}"; do
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue 2; sleep 0.05; done
    echo "grpc_echo on $p did not start" >&2; exit 1
  done
}

stop_servers() {   # sets ANSWERED, the calls all servers answered, and SPREAD, each one's
  # Not in a $(…) subshell: only this shell can wait for its servers to write their counts.
  local pid p n
  ANSWERED=0 SPREAD=""
  for pid in "${SERVER_PIDS[@]}"; do kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; done
  for p in "${PORTS[@]}"; do
    n=$(awk '/ calls$/ {print $2}' "$TMP/server-$p.log")
    ANSWERED=$((ANSWERED + n)) SPREAD=$SPREAD${SPREAD:+/}$n
  done
}

start() {   # start mode $1's proxy pinned to PROXY_CPU (none for direct); sets PID and TARGET
  PID="" TARGET=$LISTEN
  case $1 in
    direct) TARGET=127.0.0.1:${PORTS[0]} ;;
    haproxy) taskset -c "$PROXY_CPU" haproxy -f "$TMP/haproxy.cfg" -db & PID=$! ;;
    lb)
      RUST_LOG=warn taskset -c "$PROXY_CPU" "$LB" --config "$TMP/lb.toml" & PID=$!
      for _ in $(seq 100); do
        psql -q -h 127.0.0.1 -U postgres -d $DB -tAc "SELECT 1 FROM workers LIMIT 0" >/dev/null 2>&1 && break
        sleep 0.1
      done
      psql -q -h 127.0.0.1 -U postgres -d $DB -c "TRUNCATE workers; INSERT INTO workers(worker_address) VALUES $(printf "('127.0.0.1:%s')," "${PORTS[@]}" | sed 's/,$//')" >/dev/null ;;
  esac
  # Ready when a whole call comes back OK; the one that does is counted by a server.
  for _ in $(seq 100); do grpc_ok "$TARGET" && return; sleep 0.05; done
  echo "$1: no call to $TARGET ended with grpc-status 0; one more, verbose:" >&2
  curl -sv --http2-prior-knowledge --max-time 2 "${GRPC_HEADERS[@]}" --data-binary @"$TMP/body.bin" \
    "http://$TARGET/bench.Echo/Unary" -o /dev/null >&2 || true
  exit 1
}

cpu_ticks() {   # user+system clock ticks of the given processes
  local total=0 p
  for p in "$@"; do total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
  echo $total
}

h2load_run() {   # h2load_run N: N calls to TARGET; output in $TMP/out, its CPU seconds in $TMP/time
  local TIMEFORMAT='%3U %3S'
  { time taskset -c "$LOAD_CPU" h2load -n"$1" -c"$CONNS" -m"$STREAMS" -d "$TMP/body.bin" \
      "${GRPC_HEADERS[@]}" "http://$TARGET/bench.Echo/Unary" >"$TMP/out" 2>"$TMP/err"; } 2>"$TMP/time"
  # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
  awk '/^requests:/ {print $8, $10 + $12 + $14}' "$TMP/out"
}

RESULTS=$TMP/results
TCK=$(getconf CLK_TCK)
for rep in $(seq "$REPS"); do
  for mode in $MODES; do
    start_servers
    start $mode
    read -r warm_ok _ < <(h2load_run $((CALLS / 5)))
    s0=$(cpu_ticks "${SERVER_PIDS[@]}") p0=$([ -n "$PID" ] && cpu_ticks $PID || echo 0)
    read -r ok failed < <(h2load_run "$CALLS")
    s1=$(cpu_ticks "${SERVER_PIDS[@]}") p1=$([ -n "$PID" ] && cpu_ticks $PID || echo 0)
    [ -n "$PID" ] && { kill $PID; wait $PID 2>/dev/null || true; }
    stop_servers
    lost=$((1 + warm_ok + ok - ANSWERED))   # 1: start's check call
    cps=$(awk '/^finished in/ {print $4}' "$TMP/out")
    client=$(awk -v n="$ok" '{print ($1 + $2) * 1e6 / n}' "$TMP/time")
    server=$(echo "($s1 - $s0) * 1000000 / $TCK / $ok" | bc -l)
    proxy=$(echo "($p1 - $p0) * 1000000 / $TCK / $ok" | bc -l)
    printf "  [%s/%s] %-8s %9.0f calls/s  us/call: client %6.2f  servers %6.2f  proxy %6.2f  failed %s lost %s  per server %s\n" \
      "$rep" "$REPS" $mode "$cps" "$client" "$server" "$proxy" "$failed" "$lost" "$SPREAD"
    echo "$mode $cps $client $server $proxy $failed $lost $rep" >>"$RESULTS"
  done
done

echo
echo "gRPC unary, h2load -c $CONNS -m $STREAMS -n $CALLS, $PAYLOAD-byte payload, $SERVERS grpc_echo server(s) x $THREADS thread(s);" \
  "medians over $REPS reps; ratios are medians of per-rep ratios"
printf "%-8s %10s %9s %10s %10s %10s %9s %7s %5s\n" \
  mode calls/s "x direct" "client us" "server us" "proxy us" "x haproxy" failed lost
python3 - "$RESULTS" "$MODES" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = lambda m: {r[7]: r for r in rows if r[0] == m}
direct, hap = by("direct"), by("haproxy")
def ratio(mine, ref, i):
    pairs = [(float(r[i]), float(ref[k][i])) for k, r in mine.items() if k in ref]
    return f"{st.median(a / b for a, b in pairs):.2f}" if pairs and all(b for _, b in pairs) else "-"
for m in sys.argv[2].split():
    mine = by(m)
    med = lambda i: st.median(float(r[i]) for r in mine.values())
    proxy = f"{med(4):10.2f}" if m != "direct" else f"{'-':>10}"
    print(f"{m:<8} {med(1):10.0f} {ratio(mine, direct, 1):>9} {med(2):10.2f} {med(3):10.2f} {proxy}"
          f" {ratio(mine, hap, 4) if m != 'direct' else '-':>9}"
          f" {sum(int(r[5]) for r in mine.values()):7d} {sum(int(r[6]) for r in mine.values()):5d}")
EOF
if [[ " $MODES " == *" lb "* ]]; then
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
fi
