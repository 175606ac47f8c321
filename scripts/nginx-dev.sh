#!/usr/bin/env bash
# A throwaway nginx on a free loopback port that routes like ingress-nginx does for a stand's Ingress carrying
#   nginx.ingress.kubernetes.io/custom-http-errors: "503"
#   nginx.ingress.kubernetes.io/default-backend: <wake service>
# for the sleep/wake tests (issue 23). Any Host is proxied to UPSTREAM (the stand's app); draftd (BACKEND)
# gets the request when the stand cannot answer:
#
#   - the app answers 503: like ingress-nginx's error_page 503 = @custom_<upstream>_503 (nginx.tmpl,
#     template "CUSTOM_ERRORS"): the same method and body are re-sent to BACKEND with the URI rewritten to "/"
#     (query string kept), X-Code: 503, X-Format (the client's Accept), X-Original-URI, X-Namespace,
#     X-Ingress-Name, X-Service-Name, X-Service-Port, X-Request-ID, X-Forwarded-For and Host, plus the
#     client's own headers. BACKEND's answer goes to the client as it is (proxy_intercept_errors off).
#   - the app cannot be reached (connection refused or timed out; nginx's own 502/504): stands in for
#     "the Service has no endpoints" (scaled to zero). ingress-nginx then points the location itself at the
#     default backend (controller.go, location.Backend = "custom-default-backend-..."): the request goes to
#     BACKEND with its original URI, method and body, the usual proxy headers and X-Code: 503, X-Format,
#     X-Namespace, X-Ingress-Name, X-Service-Name, X-Service-Port, X-Request-ID (no X-Original-URI).
#     If BACKEND answers 503 there, ingress-nginx's per-location error_page 503 sends the request to BACKEND
#     a second time the first way (rewritten to "/", with X-Original-URI); this nginx does the same.
#   Known difference: ingress-nginx with custom-http-errors "503" would hand a 502/504 *answered* by a running
#   app to the client; here every 502/504 goes to BACKEND, since nginx cannot tell them from a refused connect.
#
#   eval "$(UPSTREAM=127.0.0.1:8081 BACKEND=127.0.0.1:8082 scripts/nginx-dev.sh start DIR)"
#                                     # prints exports: NGINX_URL NGINX_PID
#   scripts/nginx-dev.sh stop DIR     # stops the nginx started with DIR, by its PID
# (The variables go inside the $(...), or are exported before.)
#
# UPSTREAM and BACKEND (host:port) are required. The names nginx reports in the headers come from
# STAND_NAMESPACE (default draft-test), STAND_INGRESS (stand), STAND_SERVICE (web), STAND_SERVICE_PORT (8080)
# and STAND_WAKE_SERVICE (draftd-wake, the default-backend Service's name; only in the upstream name).
# NGINX_DEV_PORT, when set, fixes the port.
# DIR holds nginx.conf, the PID file, error.log, access.log (with upstream status and the X-Code sent) and
# nginx's temp directories; nothing outside DIR is written, so it runs as root or not.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
command="${1:-}"
dir="${2:-}"
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

case "$command" in
  start)
    : "${UPSTREAM:?nginx-dev: set UPSTREAM=host:port (the stand app)}"
    : "${BACKEND:?nginx-dev: set BACKEND=host:port (draftd)}"
    namespace="${STAND_NAMESPACE:-draft-test}"
    ingress="${STAND_INGRESS:-stand}"
    service="${STAND_SERVICE:-web}"
    service_port="${STAND_SERVICE_PORT:-8080}"
    wake="${STAND_WAKE_SERVICE:-draftd-wake}"
    for value in "$UPSTREAM" "$BACKEND" "$namespace" "$ingress" "$service" "$service_port" "$wake"; do
      [[ "$value" =~ ^[A-Za-z0-9._:-]+$ ]] || { echo "nginx-dev: unexpected characters in '$value'" >&2; exit 2; }
    done
    nginx="$("$root/scripts/install-web.sh" | sed -n 1p)"
    mkdir -p "$dir/tmp"
    dir="$(cd "$dir" && pwd)"
    port="${NGINX_DEV_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    # Workers run as nginx's default "nobody" when the master is root and could not enter a 0700 DIR.
    user=""
    if [ "$(id -u)" = 0 ]; then user="user root;"; fi
    default_backend="custom-default-backend-$namespace-$wake"

    # The headers of ingress-nginx's location block (nginx.tmpl, "location {{ $path }}"), with its defaults
    # use-forwarded-headers=false and proxy-add-original-uri-header=false.
    cat >"$dir/proxy_headers.conf" <<'EOF'
proxy_set_header Host                      $best_http_host;
proxy_set_header Upgrade                   $http_upgrade;
proxy_set_header Connection                $connection_upgrade;
proxy_set_header X-Request-ID              $req_id;
proxy_set_header X-Real-IP                 $remote_addr;
proxy_set_header X-Forwarded-For           $remote_addr;
proxy_set_header X-Forwarded-Host          $best_http_host;
proxy_set_header X-Forwarded-Port          $pass_port;
proxy_set_header X-Forwarded-Proto         $pass_access_scheme;
proxy_set_header X-Forwarded-Scheme        $pass_access_scheme;
proxy_set_header X-Scheme                  $pass_access_scheme;
proxy_set_header X-Original-Forwarded-For  $http_x_forwarded_for;
proxy_set_header X-Original-Forwarded-Host $http_x_forwarded_host;
proxy_set_header Proxy                     "";
EOF

    cat >"$dir/nginx.conf" <<EOF
# Written by scripts/nginx-dev.sh; see its header comment.
$user
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log info;

events {
    worker_connections 256;
}

http {
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path       $dir/tmp/proxy;
    fastcgi_temp_path     $dir/tmp/fastcgi;
    uwsgi_temp_path       $dir/tmp/uwsgi;
    scgi_temp_path        $dir/tmp/scgi;

    log_format dev '\$remote_addr "\$request" host=\$http_host status=\$status '
                   'upstream=\$upstream_addr upstream_status=\$upstream_status request_id=\$req_id';
    access_log $dir/access.log dev;

    default_type text/plain;
    server_tokens off;
    # ingress-nginx's nginx.tmpl: a client X-Request-ID is passed on, otherwise nginx makes one.
    map \$http_x_request_id \$req_id {
        default \$http_x_request_id;
        ""      \$request_id;
    }
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ""      close;
    }

    # max_fails=0: a refused connect must not mark the only server down for the next requests.
    upstream app {
        server $UPSTREAM max_fails=0;
    }
    upstream draftd {
        server $BACKEND max_fails=0;
    }

    server {
        listen 127.0.0.1:$port default_server;
        server_name _;
        # Needed only for the second hop of the no-endpoints stand-in (@no_endpoints -> @custom_..._503);
        # ingress-nginx reaches that hop from its first error_page.
        recursive_error_pages on;

        # ingress-nginx's nginx.tmpl, template "CUSTOM_ERRORS".
        location @custom_${default_backend}_503 {
            internal;
            proxy_intercept_errors off;

            proxy_set_header       X-Code             503;
            proxy_set_header       X-Format           \$http_accept;
            proxy_set_header       X-Original-URI     \$request_uri;
            proxy_set_header       X-Namespace        \$namespace;
            proxy_set_header       X-Ingress-Name     \$ingress_name;
            proxy_set_header       X-Service-Name     \$service_name;
            proxy_set_header       X-Service-Port     \$service_port;
            proxy_set_header       X-Request-ID       \$req_id;
            proxy_set_header       X-Forwarded-For    \$remote_addr;
            proxy_set_header       Host               \$best_http_host;

            set \$proxy_upstream_name "$default_backend";

            rewrite                (.*) / break;

            proxy_http_version 1.1;
            proxy_pass http://draftd;
        }

        # Stand-in for a Service without endpoints: ingress-nginx's location with
        # \$location.Backend = "custom-default-backend-..." (nginx.tmpl, "hasPrefix \$location.Backend").
        location @no_endpoints {
            internal;
            include $dir/proxy_headers.conf;
            proxy_set_header       X-Code             503;
            proxy_set_header       X-Format           \$http_accept;
            proxy_set_header       X-Namespace        \$namespace;
            proxy_set_header       X-Ingress-Name     \$ingress_name;
            proxy_set_header       X-Service-Name     \$service_name;
            proxy_set_header       X-Service-Port     \$service_port;
            proxy_set_header       X-Request-ID       \$req_id;

            set \$proxy_upstream_name "$default_backend";

            proxy_intercept_errors on;
            error_page 503 = @custom_${default_backend}_503;

            proxy_http_version 1.1;
            proxy_pass http://draftd;
        }

        location / {
            set \$namespace      "$namespace";
            set \$ingress_name   "$ingress";
            set \$service_name   "$service";
            set \$service_port   "$service_port";
            set \$location_path  "/";

            set \$proxy_upstream_name "$namespace-$service-$service_port";
            set \$pass_access_scheme  \$scheme;
            set \$pass_server_port    \$server_port;
            set \$best_http_host      \$http_host;
            set \$pass_port           \$pass_server_port;

            include $dir/proxy_headers.conf;

            # ingress-nginx defaults: proxy-connect-timeout 5s, proxy-next-upstream "error timeout", 3 tries.
            proxy_connect_timeout      5s;
            proxy_next_upstream        error timeout;
            proxy_next_upstream_tries  3;
            proxy_http_version         1.1;

            # Custom error pages per ingress (custom-http-errors: "503").
            proxy_intercept_errors on;
            error_page 503 = @custom_${default_backend}_503;
            # Not in ingress-nginx: a refused connect stands in for "no endpoints".
            error_page 502 504 = @no_endpoints;

            proxy_pass http://app;
        }
    }
}
EOF
    "$nginx" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >&2 \
      || { echo "nginx-dev: nginx -t failed:" >&2; tail -5 "$dir/error.log" >&2; exit 1; }
    "$nginx" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/nginx.out" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/nginx-dev.pid"
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || { echo "nginx-dev: nginx exited:" >&2; tail -5 "$dir/error.log" >&2; exit 1; }
      sleep 0.1
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "nginx-dev: no answer on 127.0.0.1:$port" >&2; kill "$pid"; exit 1; }
    echo "export NGINX_URL=http://127.0.0.1:$port NGINX_PID=$pid"
    ;;
  stop)
    [ -f "$dir/nginx-dev.pid" ] || exit 0
    pid="$(cat "$dir/nginx-dev.pid")"
    # SIGTERM: nginx's fast shutdown, the master stops its workers. If it hangs, kill both by PID.
    workers="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" $workers 2>/dev/null || true
    fi
    rm -f "$dir/nginx-dev.pid"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
