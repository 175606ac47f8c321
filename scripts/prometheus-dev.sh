#!/usr/bin/env bash
# A throwaway Prometheus on a free loopback port, for the sleep/wake tests (issue 23): draftd asks it how many
# requests a stand's namespace got lately (ingress-nginx's nginx_ingress_controller_requests counter).
# Scrape and evaluation interval 1s, so a counter change is visible to /api/v1/query within about 1-2 s.
# start returns once every target has been scraped once (5-7 s after start, see below).
#
#   eval "$(PROM_TARGETS=127.0.0.1:9913,127.0.0.1:9914 scripts/prometheus-dev.sh start DIR)"
#                                          # prints exports: PROM_URL PROM_PID
#   scripts/prometheus-dev.sh stop DIR     # stops the server started with DIR, by its PID
# (The variables go inside the $(...): "VAR=x eval "$(...)"" would not pass them to the script.)
#
# PROM_TARGETS: comma-separated host:port list, scraped at /metrics over http under job "ingress-nginx"
# (may be empty: no targets). The targets live in DIR/targets.json (file_sd): a test that learns its
# exporter's port only later can rewrite that file; Prometheus picks it up within about 6 s.
# DIR holds prometheus.yml, targets.json, the TSDB (DIR/data), the log and the PID file.
# PROM_DEV_PORT, when set, fixes the port. No labels are added besides job and instance, so the metric's own
# "namespace" label stays "namespace" (see notes: a real cluster's scrape config may turn it into
# "exported_namespace").
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
command="${1:-}"
dir="${2:-}"
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

case "$command" in
  start)
    prometheus="$("$root/scripts/install-web.sh" | sed -n 2p)"
    mkdir -p "$dir/data"
    dir="$(cd "$dir" && pwd)"
    port="${PROM_DEV_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    targets=""
    IFS=, read -r -a list <<<"${PROM_TARGETS:-}"
    for target in "${list[@]}"; do
      target="${target// /}"
      [ -n "$target" ] || continue
      targets="${targets:+$targets, }\"$target\""
    done
    printf '[{"targets": [%s], "labels": {}}]\n' "$targets" >"$dir/targets.json"
    cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ingress-nginx
    metrics_path: /metrics
    scheme: http
    file_sd_configs:
      - files: ["$dir/targets.json"]
        refresh_interval: 1s
EOF
    "$prometheus" \
      --config.file="$dir/prometheus.yml" \
      --storage.tsdb.path="$dir/data" \
      --web.listen-address="127.0.0.1:$port" \
      --web.enable-lifecycle \
      >"$dir/prometheus.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/prometheus.pid"
    url="http://127.0.0.1:$port"
    for _ in $(seq 150); do
      curl -fsS "$url/-/ready" >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || { echo "prometheus-dev: prometheus exited:" >&2; tail -5 "$dir/prometheus.log" >&2; exit 1; }
      sleep 0.1
    done
    curl -fsS "$url/-/ready" >/dev/null 2>&1 || { echo "prometheus-dev: not ready on $url" >&2; kill "$pid"; exit 1; }
    # Ready is not scraping: Prometheus 2.42 applies discovered targets every 5 s (not configurable in this
    # version), so the first scrape comes 5-7 s after start. Wait until every target has been tried once
    # (an "up" series exists for it, 1 or 0), so a test's first query already sees data.
    if [ "${#list[@]}" -gt 0 ] && [ -n "$targets" ]; then
      want="$(grep -o '"[^"]*"' <<<"$targets" | wc -l)"
      for _ in $(seq 300); do
        have="$(curl -fsS --data-urlencode 'query=count(up{job="ingress-nginx"})' "$url/api/v1/query" 2>/dev/null \
          | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0)"
        [ "$have" = "$want" ] && break
        sleep 0.1
      done
      [ "$have" = "$want" ] || { echo "prometheus-dev: targets not scraped within 30 s ($have of $want)" >&2; kill "$pid"; exit 1; }
    fi
    echo "export PROM_URL=$url PROM_PID=$pid"
    ;;
  stop)
    [ -f "$dir/prometheus.pid" ] || exit 0
    pid="$(cat "$dir/prometheus.pid")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/prometheus.pid"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
