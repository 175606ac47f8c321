#!/usr/bin/env bash
# Builds the local control plane the Kubernetes-mode tests run against, from Go modules at pinned
# versions: kube-apiserver, kube-controller-manager and kube-scheduler (k8s.io/kubernetes), etcd
# (go.etcd.io/etcd/server/v3's etcdmain, the same version Kubernetes itself requires) and kwok
# (sigs.k8s.io/kwok), which stands in for kubelets.
#
# k8s.io/kubernetes is not meant to be a dependency: its go.mod points every k8s.io/* staging module
# at ./staging/src/..., a path that only exists in its own tree. The module built here replaces each
# of those with the same release's published v0.x version instead.
#
# Binaries go to a cache outside the clone keyed by the versions (DRAFTD_K8S_CACHE, default
# /var/tmp/draftd-k8s), and a second run is a no-op. Prints the bin directory on its last line.
set -euo pipefail

KUBERNETES_VERSION="v1.35.4"
ETCD_VERSION="v3.6.5" # what k8s.io/kubernetes $KUBERNETES_VERSION requires; checked below
KWOK_VERSION="v0.8.0"

cache="${DRAFTD_K8S_CACHE:-/var/tmp/draftd-k8s}"
bin="$cache/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"
tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

complete() { for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
if complete; then
  echo "install-k8s: already built in $bin" >&2
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "install-k8s: Go is required (go 1.25 or newer)" >&2; exit 1; }
# Never fetch a toolchain: the machine's Go builds all three modules.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
start=$(date +%s)
work="$cache/build-$KUBERNETES_VERSION"
rm -rf "$work"
mkdir -p "$work/etcd" "$bin"

echo "install-k8s: resolving k8s.io/kubernetes@$KUBERNETES_VERSION" >&2
gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
staging_version="v0.${KUBERNETES_VERSION#v1.}"
required_etcd="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$gomod")"
if [ "$required_etcd" != "$ETCD_VERSION" ]; then
  echo "install-k8s: k8s.io/kubernetes@$KUBERNETES_VERSION requires etcd $required_etcd; set ETCD_VERSION to it" >&2
  exit 1
fi

{
  echo "module draftd.local/control-plane"
  echo
  echo "go 1.25.0"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $KUBERNETES_VERSION"
  echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  echo ")"
  echo
  echo "replace ("
  # `k8s.io/api => ./staging/src/k8s.io/api` becomes `k8s.io/api => k8s.io/api v0.35.4`.
  sed -nE 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/k8s\.io/[A-Za-z0-9._-]+[[:space:]]*$#\t\1 => \1 '"$staging_version"'#p' "$gomod"
  echo ")"
} >"$work/go.mod"

# etcd's own main package lives in a module of its own with replace lines; its entry point is one call.
cat >"$work/etcd/main.go" <<'GO'
// The etcd server, built from go.etcd.io/etcd/server/v3 at the version Kubernetes requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
cat >"$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO

echo "install-k8s: downloading modules" >&2
(cd "$work" && go mod tidy >&2)

# Without these the binaries call themselves v0.0.0-master, which clients and helm cannot parse.
minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

echo "install-k8s: building etcd and the Kubernetes control plane (minutes on two cores)" >&2
(cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler)
(cd "$work" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" ./etcd)

echo "install-k8s: building kwok $KWOK_VERSION" >&2
# kwok's go.mod has no replace lines, so `go install` builds it as published.
GOBIN="$bin" GOFLAGS= go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

complete || { echo "install-k8s: a binary is missing from $bin" >&2; exit 1; }
rm -rf "$work"
echo "install-k8s: built in $(( $(date +%s) - start )) s into $bin" >&2
echo "$bin"
