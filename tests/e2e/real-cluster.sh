#!/usr/bin/env bash
# End to end against a real cluster: a signed GitHub webhook opens a PR, draftd (kubernetes mode)
# builds the stand (namespace with quota, limits and network policies; helm release; rollout and 5xx
# gate through the API server proxy; report), `stands extend` moves the namespace's
# draftd.io/expires-at, then the PR is closed and the stand torn down, and `draftd reap` sweeps once
# (as the reaper CronJob does). No fakes: the real binary, helm, Postgres and cluster.
#
#   KUBECONFIG=~/.kube/config tests/e2e/real-cluster.sh
#
# Without KUBECONFIG it prints why it skips and exits 0. The cluster must be able to run the image
# the script provides (see E2E_LOAD) and reach Docker Hub for the chart's WireMock mocks.
#
# Settings (environment):
#   E2E_LOAD         how the app image reaches the cluster: kind (default when `kind` is on PATH),
#                    k3d, or none (then E2E_IMAGE_REPO:<tag> must already be pullable by the cluster)
#   E2E_CLUSTER      the kind/k3d cluster name (default: kind's "kind", k3d's "k3s-default")
#   E2E_IMAGE_REPO   repository of the app image (default localhost/draftd-e2e-app)
#   E2E_TIMEOUT      seconds to wait for each stage (default 600)
#   E2E_KEEP=1       leave the stand and draftd's database behind for inspection
#
# The image step and an in-cluster build (BuildKit really runs here, unlike on the local control
# plane), when E2E_REGISTRY is set: a registry that this machine, the nodes and the cluster's pods all
# reach under that same host:port over plain HTTP (e.g. a registry on the host's LAN address, with
# the nodes' containerd told it is insecure). The stand's image is then not loaded but built by
# draftd from a public repository at a commit, pushed there, and run by digest:
#   E2E_REGISTRY        host:port of that registry
#   E2E_REGISTRY_CIDR   its address as a CIDR, let out of the build namespace's network policy
#   E2E_BUILD_REPO      owner/name of a public GitHub repository with a Dockerfile whose image
#                       serves HTTP on port 5678, like hashicorp/http-echo (default)
#   E2E_BUILD_SHA       the commit to build (40 hex digits; required with E2E_REGISTRY)
#   E2E_BUILD_CONTEXT   the folder of the repository to build (default .)
set -euo pipefail

if [ -z "${KUBECONFIG:-}" ]; then
    echo "real-cluster e2e: skipped: KUBECONFIG is not set (point it at a kind or k3d cluster to run it)"
    exit 0
fi

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
timeout="${E2E_TIMEOUT:-600}"
repo="${E2E_IMAGE_REPO:-localhost/draftd-e2e-app}"
work="$(mktemp -d)"
say() { printf '==> %s\n' "$*"; }
die() { printf 'real-cluster e2e: FAILED: %s\n' "$*" >&2; exit 1; }

scripts/install-tools.sh >/dev/null
kubectl="$root/.tools/bin/kubectl"
"$kubectl" version --request-timeout=10s >/dev/null || die "the cluster in KUBECONFIG=$KUBECONFIG does not answer"
source scripts/pg-env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/draftd-target}"
cargo build --quiet --bin draftd
draftd="$CARGO_TARGET_DIR/debug/draftd"

run_id="$(date +%s)-$$"
branch="feature/e2e-$run_id"
sha="$(printf '%s' "$run_id" | sha1sum | cut -c1-40)"
build_repo="${E2E_BUILD_REPO:-hashicorp/http-echo}"
if [ -n "${E2E_REGISTRY:-}" ]; then
    [[ "${E2E_BUILD_SHA:-}" =~ ^[0-9a-f]{40}$ ]] || die "E2E_REGISTRY needs E2E_BUILD_SHA, a commit of $build_repo"
    sha="$E2E_BUILD_SHA"
    repo="$E2E_REGISTRY/draftd-e2e-app"
    E2E_LOAD=none
fi
namespace="draft-feature-e2e-$run_id"
tag="draft-feature-e2e-$run_id-${sha:0:7}"

say "app image $repo:$tag"
load="${E2E_LOAD:-$(command -v kind >/dev/null && echo kind || echo none)}"
if [ "$load" != none ]; then
    docker pull --quiet hashicorp/http-echo:1.0 >/dev/null
    docker tag hashicorp/http-echo:1.0 "$repo:$tag"
    case "$load" in
        kind) kind load docker-image "$repo:$tag" --name "${E2E_CLUSTER:-kind}" ;;
        k3d) k3d image import "$repo:$tag" --cluster "${E2E_CLUSTER:-k3s-default}" ;;
        *) die "E2E_LOAD=$load: expected kind, k3d or none" ;;
    esac
fi

database="draftd_e2e_$(printf '%s' "$run_id" | tr -c '0-9a-z\n' '_')"
admin="${DATABASE_URL%/*}"
psql -q "$admin/postgres" -c "create database $database"
secret="e2e-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
port=$(( 20000 + RANDOM % 20000 ))
cat >"$work/draftd.toml" <<TOML
listen = "127.0.0.1:$port"
database_url = "$admin/$database"

[cluster]
mode = "kubernetes"
kubeconfig = "$KUBECONFIG"
helm_path = "$root/.tools/bin/helm"

[cluster.verify]
probe_window = "10s"

[[projects]]
name = "e2e"
forge = "github"
repo = "${E2E_REGISTRY:+$build_repo}${E2E_REGISTRY:-Codertocat/Hello-World}"
webhook_secret_env = "E2E_WEBHOOK_SECRET"
image = "$repo"
chart = "$root/charts/stand"
values = ["$root/values/draft.yaml", "$root/tests/e2e/values.yaml"]
TOML
if [ -n "${E2E_REGISTRY:-}" ]; then
    # Built by draftd at once (no CI here), fetched without a token (a public repository).
    cat >>"$work/draftd.toml" <<TOML
build = { always = true, public = true, context = "${E2E_BUILD_CONTEXT:-.}" }
registry = { insecure = true, wait = "2m" }
TOML
    "$kubectl" apply -f "$root/deploy/build.yaml" >/dev/null
    if [ -n "${E2E_REGISTRY_CIDR:-}" ]; then
        "$kubectl" apply -f - >/dev/null <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: draftd-e2e-registry, namespace: draftd-build}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: "$E2E_REGISTRY_CIDR"}}]}]
YAML
    fi
fi

serve_pid=""
cleanup() {
    status=$?
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
    if [ "${E2E_KEEP:-}" != 1 ]; then
        # Only ever a namespace draftd labelled as its own.
        if "$kubectl" get namespace "$namespace" -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}' 2>/dev/null | grep -qx draftd; then
            "$kubectl" delete namespace "$namespace" --wait=false >/dev/null || true
        fi
        psql -q "$admin/postgres" -c "drop database if exists $database with (force)" || true
        rm -rf "$work"
    else
        echo "kept: namespace $namespace, database $database, files in $work"
    fi
    [ $status -eq 0 ] || echo "draftd's log: $work/serve.log (kept on failure)" >&2
    exit $status
}
trap cleanup EXIT

say "draftd serve (kubernetes mode) on 127.0.0.1:$port"
E2E_WEBHOOK_SECRET="$secret" "$draftd" --config "$work/draftd.toml" serve >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/health/startup" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/health/startup" >/dev/null || die "draftd did not start: $(tail -5 "$work/serve.log")"

# post EVENT FIXTURE ACTION: a recorded GitHub payload for our branch and sha, signed like GitHub.
post() {
    python3 - "$root/tests/fixtures/webhooks/github/$2" "$3" "$branch" "$sha" >"$work/body.json" <<'PY'
import json, os, sys
path, action, branch, sha = sys.argv[1:]
body = json.load(open(path))
body["action"] = action
body["pull_request"]["head"]["ref"] = branch
body["pull_request"]["head"]["sha"] = sha
body["pull_request"]["state"] = "closed" if action == "closed" else "open"
if os.environ.get("E2E_REGISTRY"):
    body["repository"]["full_name"] = os.environ.get("E2E_BUILD_REPO", "hashicorp/http-echo")
json.dump(body, sys.stdout)
PY
    signature="sha256=$(openssl dgst -sha256 -hmac "$secret" -r <"$work/body.json" | cut -d' ' -f1)"
    curl -fsS -X POST "http://127.0.0.1:$port/webhooks/github" -H 'content-type: application/json' \
        -H "x-github-event: $1" -H "x-github-delivery: $(cat /proc/sys/kernel/random/uuid)" \
        -H "x-hub-signature-256: $signature" --data-binary @"$work/body.json"
    echo
}

# wait_run KIND: until the stand's newest run of KIND has ended; fails unless it succeeded.
wait_run() {
    local deadline=$(( $(date +%s) + timeout )) state=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        state="$(E2E_WEBHOOK_SECRET=x "$draftd" --config "$work/draftd.toml" stands show "e2e/$branch" --json 2>/dev/null |
            python3 -c "import json,sys; r=[r for r in json.load(sys.stdin)['runs'] if r['kind']=='$1']; print(r[0]['state'] if r else '')" || true)"
        case "$state" in
            succeeded) return 0 ;;
            failed|superseded|cancelled|rejected)
                E2E_WEBHOOK_SECRET=x "$draftd" --config "$work/draftd.toml" stands show "e2e/$branch" >&2 || true
                die "the $1 run ended $state" ;;
        esac
        sleep 3
    done
    die "the $1 run did not end within ${timeout}s (last state: ${state:-none})"
}

say "PR opened on $branch"
post pull_request pull_request.opened.json opened
wait_run deploy
say "stand built; checking what is in the cluster"
label() { "$kubectl" get namespace "$namespace" -o "jsonpath={.metadata.labels.$1}"; }
[ "$(label 'app\.kubernetes\.io/managed-by')" = draftd ] || die "namespace $namespace lacks draftd's label"
[ -n "$(label 'draftd\.io/stand')" ] || die "namespace $namespace lacks draftd.io/stand"
for object in resourcequota/draftd-quota limitrange/draftd-limits networkpolicy/draftd-default-deny networkpolicy/draftd-allow; do
    "$kubectl" -n "$namespace" get "$object" >/dev/null || die "$object missing"
done
[ "$("$kubectl" -n "$namespace" get serviceaccount default -o 'jsonpath={.automountServiceAccountToken}')" = false ] ||
    die "the default ServiceAccount mounts an API token"
# `rollout status` takes one workload at a time (without a name it refuses to run): the app and
# each of its mocks.
deployments="$("$kubectl" -n "$namespace" get deployments -o name)"
[ -n "$deployments" ] || die "the release has no Deployments"
for deployment in $deployments; do
    "$kubectl" -n "$namespace" rollout status "$deployment" --timeout=10s >/dev/null ||
        die "$deployment is not rolled out"
done
E2E_WEBHOOK_SECRET=x "$draftd" --config "$work/draftd.toml" stands show "e2e/$branch"
if [ -n "${E2E_REGISTRY:-}" ]; then
    say "the image was built in the cluster and runs by digest"
    app_image="$("$kubectl" -n "$namespace" get deployments -o jsonpath='{.items[*].spec.template.spec.containers[0].image}')"
    [[ " $app_image " == *" $repo@sha256:"* ]] || die "no Deployment runs $repo@sha256:…: $app_image"
    "$kubectl" -n draftd-build get jobs -l "draftd.io/job=build" -o wide || die "no build Job"
fi

say "stand extended by 1h"
expires() { "$kubectl" get namespace "$namespace" -o 'jsonpath={.metadata.annotations.draftd\.io/expires-at}'; }
before="$(expires)"
[ -n "$before" ] || die "namespace $namespace lacks draftd.io/expires-at"
E2E_WEBHOOK_SECRET=x "$draftd" --config "$work/draftd.toml" stands extend "e2e/$branch" --by 1h
wait_run extend
after="$(expires)"
# The stand's expiry is far from [stands] max_expiry, so the whole hour is added.
[ $(( $(date -d "$after" +%s) - $(date -d "$before" +%s) )) -eq 3600 ] ||
    die "draftd.io/expires-at went from $before to $after, not 1h later"
echo "draftd.io/expires-at: $before -> $after"

say "PR closed"
post pull_request pull_request.closed.json closed
wait_run teardown
"$kubectl" get namespace "$namespace" >/dev/null 2>&1 && die "namespace $namespace is still there after teardown"

# One sweep as the CronJob runs it (deploy/reaper-cronjob.yaml). serve's own reaper may hold the
# sweep lock at that moment: then `reap` reports busy, which is a success too.
say "draftd reap (one sweep)"
E2E_WEBHOOK_SECRET=x "$draftd" --config "$work/draftd.toml" reap --json >"$work/reap.json" ||
    die "draftd reap failed: $(cat "$work/reap.json")"
outcome="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['outcome'])" "$work/reap.json")" ||
    die "draftd reap --json printed no outcome: $(cat "$work/reap.json")"
case "$outcome" in
    swept|busy) echo "reap: $outcome" ;;
    *) die "draftd reap reported $outcome" ;;
esac
say "real-cluster e2e: passed"
