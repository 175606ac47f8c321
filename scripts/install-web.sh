#!/usr/bin/env bash
# Installs Debian's nginx (/usr/sbin/nginx) and prometheus (/usr/bin/prometheus) for the sleep/wake tests
# (issue 23): scripts/nginx-dev.sh starts a throwaway nginx shaped like ingress-nginx's custom error pages,
# scripts/prometheus-dev.sh a throwaway Prometheus that scrapes an ingress-nginx-shaped request counter.
#
# Why the plain "nginx" package: on Debian 12 it holds the binary itself and is the smallest choice; it is
# built --with-http_auth_request_module, and proxy_intercept_errors/error_page are in the core proxy module.
# (nginx-light is only nginx plus the echo module; nginx-full/-extras add more dynamic modules.)
# libnginx-mod-http-set-misc (with its dependency libnginx-mod-http-ndk) is OpenResty's set-misc module,
# which ingress-nginx builds in: its set_escape_uri makes auth-signin's `rd` (tests/support/nginx_auth.rs).
# prometheus is installed without its Recommends, so prometheus-node-exporter is not pulled in.
#
# The packages' own services are not used: Debian would start nginx on :80 and prometheus on :9090 at install.
# During the install a policy-rc.d that denies every start is put in place (unless the machine already has one,
# as Docker images do), and afterwards the services are stopped and disabled (systemctl when systemd runs,
# update-rc.d otherwise), so they do not come up at the next boot either. The tests never talk to them.
#
# Idempotent: does nothing when /usr/sbin/nginx, the set-misc module and /usr/bin/prometheus are there.
# Prints the two binary paths on stdout (nginx first); exits 1 (with the reason on stderr) when it cannot install.
set -euo pipefail

nginx=/usr/sbin/nginx
prometheus=/usr/bin/prometheus
set_misc=/usr/lib/nginx/modules/ngx_http_set_misc_module.so

if [ -x "$nginx" ] && [ -x "$prometheus" ] && [ -f "$set_misc" ] && command -v openssl >/dev/null; then
  echo "$nginx"
  echo "$prometheus"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-web: apt-get not found; install nginx and prometheus yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-web: needs root (or sudo) for apt-get" >&2; exit 1; }
  sudo="sudo"
fi

policy=/usr/sbin/policy-rc.d
ours=""
if [ ! -e "$policy" ]; then
  # invoke-rc.d asks this script before starting a service; 101 means "action not allowed".
  printf '#!/bin/sh\n# install-web.sh: no service starts during its apt-get install\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  ours=1
fi
cleanup() { if [ -n "$ours" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

echo "install-web: installing nginx and prometheus from Debian's packages (their services stay off)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale on a fresh machine; an update failure still lets a cached list work.
$sudo apt-get update -qq >&2 || true
$sudo apt-get install -y -qq --no-install-recommends nginx libnginx-mod-http-set-misc prometheus openssl >&2

for service in nginx prometheus prometheus-node-exporter; do
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$service" ]; then
    $sudo update-rc.d "$service" disable >/dev/null 2>&1 || true
    # Only when a policy-rc.d let the start happen; with ours (or Docker's) nothing runs.
    if [ -z "$ours" ] && [ -x /usr/sbin/invoke-rc.d ]; then $sudo invoke-rc.d "$service" stop >/dev/null 2>&1 || true; fi
  fi
done

[ -x "$nginx" ] || { echo "install-web: $nginx missing after install" >&2; exit 1; }
[ -x "$prometheus" ] || { echo "install-web: $prometheus missing after install" >&2; exit 1; }
[ -f "$set_misc" ] || { echo "install-web: $set_misc missing after install" >&2; exit 1; }
echo "$nginx"
echo "$prometheus"
