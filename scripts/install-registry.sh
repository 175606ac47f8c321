#!/usr/bin/env bash
# Installs Debian's docker-registry (CNCF distribution 2.8.2, /usr/bin/docker-registry) and apache2-utils
# (htpasswd, for the registry's bcrypt password file) for the image step's registry tests
# (tests/support/registry.rs starts one registry per test on loopback). The package's own service is not
# used: Debian may start it on :5000 at install; the tests never talk to it.
#
# Idempotent: does nothing when /usr/bin/docker-registry and htpasswd are there.
# Prints the docker-registry path on stdout; exits 1 (with the reason on stderr) when it cannot install.
set -euo pipefail

if [ -x /usr/bin/docker-registry ] && command -v htpasswd >/dev/null; then
  echo /usr/bin/docker-registry
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-registry: apt-get not found; install docker-registry and apache2-utils yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-registry: needs root (or sudo) for apt-get" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-registry: installing docker-registry and apache2-utils from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale on a fresh machine; an update failure still lets a cached list work.
$sudo apt-get update -qq >&2 || true
$sudo apt-get install -y -qq --no-install-recommends docker-registry apache2-utils >&2
[ -x /usr/bin/docker-registry ] || { echo "install-registry: /usr/bin/docker-registry missing after install" >&2; exit 1; }
command -v htpasswd >/dev/null || { echo "install-registry: htpasswd missing after install" >&2; exit 1; }
echo /usr/bin/docker-registry
