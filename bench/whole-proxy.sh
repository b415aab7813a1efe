#!/usr/bin/env bash
# Whole-proxy benchmark: load_balancer against HAProxy and nginx on loopback, HTTP mode (cleartext, or TLS with -t).
#
# Layout (needs 2 cores): wrk and the backends on LOAD_CPU, the proxy under test alone on
# PROXY_CPU, so every proxy gets the same single core. Backends: one nginx worker serving
# three ports with `return 200 "ok\n"`. For each repetition, every proxy runs in turn (a
# warm-up, then a measured wrk run); CPU per request is the proxy's user+system time over
# the measured run divided by the requests served. Prints medians over the repetitions and
# each figure's ratio to HAProxy.
#
# -2 (--h2): the clients speak HTTP/2 (h2c, prior knowledge) with h2load, 10 streams at
# once per connection; HAProxy binds with `proto h2`, nginx with `http2`; the backends stay
# HTTP/1.1 (unless -b h2). The latency column is then h2load's mean request time (it prints no p99).
#
# -b h2 (--backend h2): the backends speak HTTP/2 too (h2c, prior knowledge: nginx 1.22's
# `listen PORT http2` without ssl, as `http2 on` came in 1.25.1); HAProxy's servers get
# `proto h2`, load_balancer's pool `protocol = "h2"`. nginx is left out of this mode: its
# proxy_pass speaks only HTTP/1.x to upstreams (grpc_pass speaks HTTP/2, but for gRPC, so it
# would not be the same request path). Works with HTTP/1.1 (wrk) and HTTP/2 (-2) clients.
#
# -t (--tls): every proxy terminates TLS 1.3 with the same ECDSA P-256 certificate, made
# for the run with openssl, and speaks cleartext keep-alive to the backends; wrk uses
# https://. -n (--new-conn): every request on a new connection (`Connection: close`), to
# measure connection setup (with -t: a TLS handshake per request; wrk resumes sessions
# when the proxy offers tickets, as a browser would).
#
# usage: [PROXIES="haproxy lb"] bench/whole-proxy.sh [-r REPS] [-d SECONDS] [-c "64 256"] [-t] [-n] [-2] [-b http/1.1|h2]
# needs: wrk (h2load for -2), haproxy, nginx, openssl (installed with apt-get if missing), PostgreSQL on
# 127.0.0.1:5432 (user postgres), and `cargo build --release` done.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=3 DUR=5 CONNS="64" TLS=0 NEWCONN=0 H2=0 BACKEND=http/1.1
while (($#)); do
  case $1 in
    -r) REPS=$2; shift ;;
    -d) DUR=$2; shift ;;
    -c) CONNS=$2; shift ;;
    -t|--tls) TLS=1 ;;
    -n|--new-conn) NEWCONN=1 ;;
    -2|--h2) H2=1 ;;
    -b|--backend) BACKEND=$2; shift ;;
    *) echo "usage: $0 [-r REPS] [-d SECONDS] [-c \"64 256\"] [-t] [-n] [-2] [-b http/1.1|h2]" >&2; exit 2 ;;
  esac
  shift
done
PROXY_CPU=${PROXY_CPU:-1} LOAD_CPU=${LOAD_CPU:-0}
LB=${LB:-$PWD/target/release/load_balancer}
for tool in wrk haproxy nginx openssl h2load; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk haproxy nginx openssl nghttp2-client >/dev/null; }
done
if ((H2 && (TLS || NEWCONN))); then
  echo "-2 measures cleartext keep-alive HTTP/2 (h2c): not with -t or -n" >&2; exit 2
fi
case $BACKEND in
  http/1.1) ALL_PROXIES="haproxy nginx lb" ;;
  h2) ALL_PROXIES="haproxy lb" ;;   # nginx cannot proxy_pass over HTTP/2 (see the header)
  *) echo "-b: http/1.1 or h2, not $BACKEND" >&2; exit 2 ;;
esac
# PROXIES="haproxy lb" runs a subset (HAProxy stays in it: the ratios are to HAProxy).
PROXIES=${PROXIES:-$ALL_PROXIES}
[[ " $PROXIES " == *" haproxy "* ]] || { echo "PROXIES must include haproxy (the reference)" >&2; exit 2; }
[[ " $PROXIES " != *" lb "* || -x $LB ]] || { echo "build first: cargo build --release" >&2; exit 2; }

TMP=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  [ -f "$TMP/be.pid" ] && kill "$(cat "$TMP/be.pid")" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
LISTEN=127.0.0.1:18080 PORTS=(19001 19002 19003)
SCHEME=http WRK_ARGS=()
((NEWCONN)) && WRK_ARGS+=(-H "Connection: close")

# TLS: one certificate for every proxy. HAProxy reads the certificate and key from one file.
HAPROXY_BIND="" NGINX_LISTEN="" LB_TLS=""
CURL_ARGS=()
if ((H2)); then
  HAPROXY_BIND=" proto h2"
  NGINX_LISTEN=" http2"
  CURL_ARGS=(--http2-prior-knowledge)
fi
if ((TLS)); then
  SCHEME=https
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 2>/dev/null
  cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
  HAPROXY_BIND=" ssl crt $TMP/haproxy.pem ssl-min-ver TLSv1.3 alpn http/1.1"
  NGINX_LISTEN=" ssl; ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem;
    ssl_protocols TLSv1.3; ssl_session_cache shared:tls:10m"
  LB_TLS=$(printf '[listeners.tls]\ncertificates = [{ cert = "%s", key = "%s" }]\nmin_version = "1.3"\nalpn = ["http/1.1"]' "$TMP/cert.pem" "$TMP/key.pem")
fi

# Backends: one nginx worker, three ports; with -b h2 they accept only h2c with prior
# knowledge, which is what HAProxy's `proto h2` and load_balancer's h2 pools send.
BE_LISTEN="" HAPROXY_SERVER="" LB_POOL=""
if [ "$BACKEND" = h2 ]; then
  BE_LISTEN=" http2"
  HAPROXY_SERVER=" proto h2"
  LB_POOL=$(printf '[pools.default]\nprotocol = "h2"')
fi
cat >"$TMP/be.conf" <<EOF
worker_processes 1; daemon on; pid $TMP/be.pid; error_log $TMP/be.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 100000000; default_type text/plain;
$(for p in "${PORTS[@]}"; do echo "  server { listen 127.0.0.1:$p backlog=4096$BE_LISTEN; location / { return 200 \"ok\\n\"; } }"; done)
}
EOF
taskset -c "$LOAD_CPU" nginx -c "$TMP/be.conf" -p "$TMP"

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 3s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind $LISTEN$HAPROXY_BIND
  default_backend be
backend be
  balance roundrobin
  http-reuse always
$(for p in "${PORTS[@]}"; do echo "  server s$p 127.0.0.1:$p$HAPROXY_SERVER"; done)
EOF

cat >"$TMP/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $TMP/nginx.pid; error_log $TMP/nginx.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 100000000;
  upstream backends {
$(for p in "${PORTS[@]}"; do echo "    server 127.0.0.1:$p;"; done)
    keepalive 64; keepalive_requests 100000000;
  }
  server { listen $LISTEN backlog=4096$NGINX_LISTEN;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF

DB=lb_whole_proxy_bench
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null 2>&1
cat >"$TMP/lb.toml" <<EOF
[database]
url = "postgres://postgres@127.0.0.1:5432/$DB"
[[listeners]]
bind = "$LISTEN"
algorithm = "round_robin"
$LB_TLS
$LB_POOL
EOF

start() {   # start proxy $1 pinned to PROXY_CPU; sets PID
  case $1 in
    haproxy) taskset -c "$PROXY_CPU" haproxy -f "$TMP/haproxy.cfg" -db & PID=$! ;;
    nginx) taskset -c "$PROXY_CPU" nginx -c "$TMP/nginx.conf" -p "$TMP" & PID=$! ;;
    lb)
      RUST_LOG=warn taskset -c "$PROXY_CPU" "$LB" --config "$TMP/lb.toml" & PID=$!
      for _ in $(seq 100); do
        psql -q -h 127.0.0.1 -U postgres -d $DB -tAc "SELECT 1 FROM workers LIMIT 0" >/dev/null 2>&1 && break
        sleep 0.1
      done
      psql -q -h 127.0.0.1 -U postgres -d $DB -c "TRUNCATE workers; INSERT INTO workers(worker_address) VALUES $(printf "('127.0.0.1:%s')," "${PORTS[@]}" | sed 's/,$//')" >/dev/null ;;
  esac
  for _ in $(seq 100); do curl -skf "${CURL_ARGS[@]}" "$SCHEME://$LISTEN/" >/dev/null && return; sleep 0.05; done
  echo "$1 did not start" >&2; exit 1
}

cpu_ticks() {   # user+system clock ticks of PID and its child processes (nginx's worker)
  local total=0 p
  for p in $1 $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat")))
  done
  echo $total
}

RESULTS=$TMP/results
for rep in $(seq "$REPS"); do
  for c in $CONNS; do
    for proxy in $PROXIES; do
      start $proxy
      if ((H2)); then
        taskset -c "$LOAD_CPU" h2load -c"$c" -m10 -D2 "$SCHEME://$LISTEN/" >/dev/null
        t0=$(cpu_ticks $PID)
        out=$(taskset -c "$LOAD_CPU" h2load -c"$c" -m10 -D"$DUR" "$SCHEME://$LISTEN/")
        t1=$(cpu_ticks $PID)
        # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
        requests=$(echo "$out" | awk '/^requests:/ {print $8}')
        rps=$(echo "$out" | awk '/^finished in/ {print $4}')
        p99=$(echo "$out" | awk '/^time for request:/ {print $6}')
        errors=$(echo "$out" | awk '/^requests:/ {print $10 + $12 + $14}')
      else
        taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d2 "${WRK_ARGS[@]}" "$SCHEME://$LISTEN/" >/dev/null
        t0=$(cpu_ticks $PID)
        out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"$DUR" --latency "${WRK_ARGS[@]}" "$SCHEME://$LISTEN/")
        t1=$(cpu_ticks $PID)
        requests=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
        p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
        errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {n += $NF} END {print n + 0}')
      fi
      kill $PID; wait $PID 2>/dev/null || true
      us=$(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $requests" | bc -l)
      printf "  [%s/%s] %-8s c=%-4s %9.0f req/s  %s %-8s %6.2f us/req  errors %s\n" \
        "$rep" "$REPS" $proxy "$c" "$rps" "$( ((H2)) && echo mean || echo p99)" "$p99" "$us" "$errors"
      echo "$proxy $c $rps $us $errors $rep" >>"$RESULTS"
    done
  done
done

echo
echo "$SCHEME$( ((NEWCONN)) && echo ", a new connection per request")$( ((H2)) && echo ", HTTP/2 clients (h2c, 10 streams per connection)"), $BACKEND backends; medians over $REPS reps; ratios are medians of per-rep ratios to HAProxy"
printf "%-8s %5s %10s %10s %8s %8s %7s\n" proxy conns req/s us/req "x req/s" "x us" errors
python3 - "$RESULTS" "$CONNS" "$PROXIES" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
for c in sys.argv[2].split():
    hap = {r[5]: r for r in rows if r[0] == "haproxy" and r[1] == c}
    for p in sys.argv[3].split():
        mine = [r for r in rows if r[0] == p and r[1] == c]
        rps = st.median(float(r[2]) for r in mine)
        us = st.median(float(r[3]) for r in mine)
        xr = st.median(float(r[2]) / float(hap[r[5]][2]) for r in mine)
        xu = st.median(float(r[3]) / float(hap[r[5]][3]) for r in mine)
        err = sum(int(r[4]) for r in mine)
        print(f"{p:<8} {c:>5} {rps:10.0f} {us:10.2f} {xr:8.2f} {xu:8.2f} {err:7d}")
EOF
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
