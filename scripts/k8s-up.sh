#!/usr/bin/env bash
# A real, local Kubernetes control plane on 127.0.0.1 for the test suite: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler as built by scripts/install-k8s.sh, and kwok standing in
# for kubelets (stages in scripts/k8s/kwok-stages.yaml: pods go Running and Ready, Job pods complete,
# or fail when asked to; no container ever runs).
#
#   scripts/k8s-up.sh start DIR    # starts it (or reports the one already running in DIR)
#   scripts/k8s-up.sh status DIR   # exit 0 when every process runs and the API server is ready
#   scripts/k8s-up.sh stop DIR     # stops DIR's processes by PID; safe to repeat
#
# `start` prints, on stdout, KEY=VALUE lines (eval-able; a trailing `# ...` line is a comment):
#   K8S_DIR=DIR  K8S_API=https://127.0.0.1:PORT
#   KUBECONFIG_ADMIN=DIR/admin.kubeconfig     (client certificate, group system:masters)
#   KUBECONFIG_DRAFTD=DIR/draftd.kubeconfig   (a 24 h token of ServiceAccount draftd/draftd, holding
#                                              exactly deploy/rbac.yaml's rights: draftd runs as this)
# Everything else goes to stderr. DIR gets logs/<name>.log, pids/<name>.pid, pki/, etcd/ and the
# kubeconfigs. Two nodes, kwok-node-0 and kwok-node-1 (label type=kwok, no taints), take the pods.
# scripts/k8s/kwok-stages.yaml says how a test makes a Job fail (the word draftd-e2e-fail in its
# command or args) or run longer (an annotation).
#
# Pod logs: kwok serves the kubelet's /containerLogs on 127.0.0.1 (TLS, certificate of this CA) and
# the nodes point there, so `kubectl logs` (pods/log) works for a container that a kwok `Logs`
# object (kwok.x-k8s.io/v1alpha1, CRD in scripts/k8s/kwok-logs-crd.yaml) maps to a file in CRI log
# format (`<RFC 3339 time> stdout F <line>`); any other container's log is refused by kwok (400).
#
# What this cluster cannot do: no container runs, so `kubectl exec/port-forward` and the API
# server's proxy to pods and Services fail; NetworkPolicies are stored, not enforced; the
# `kubernetes` Service has no endpoints.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
command="${1:-}"
dir="${2:-}"
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start|status|stop DIR" >&2; exit 2; }
if [ ! -d "$dir" ]; then
  case "$command" in
    stop) exit 0 ;;
    status) echo "$dir does not exist"; exit 1 ;;
  esac
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

# Start order; stop goes the other way round.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
service_cidr="10.96.0.0/12"
service_ip="10.96.0.1" # the `kubernetes` Service's ClusterIP: the first address of service_cidr
# Every address a component could dial is on loopback: the API server dials pod IPs for its Service
# proxy and nodes (127.0.0.1, where kwok serves as their kubelet) for pods/log, and this machine may
# reach nothing beyond 127.0.0.0/8. Nothing listens on pod IPs, so proxied calls are refused at once.
pod_cidr="127.244.0.0/16"
nodes=(kwok-node-0 kwok-node-1)
ready_timeout=60

log() { echo "k8s-up: $*" >&2; }
pki="$dir/pki"

# The PID in DIR/pids/NAME.pid when that process is alive and is still ours: its command line
# names NAME's binary and mentions DIR (PIDs get reused, and other DIRs run the same binaries).
live_pid() {
  local name="$1" pid cmdline
  pid="$(cat "$dir/pids/$name.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  case "$cmdline" in
    */"$name "*"$dir"*) echo "$pid" ;;
    *) return 1 ;;
  esac
}

# Alive, and not a zombie waiting for a parent that is not ours to reap it.
running() {
  local state
  state="$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null)"
  [ -n "$state" ] && [ "$state" != Z ]
}

# stop_components NAME...: TERM to those of DIR's processes, up to 15 s to exit, then KILL.
stop_components() {
  local name pid pids=()
  for name in "$@"; do
    if pid="$(live_pid "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$dir/pids/$name.pid"
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  gone 150 "${pids[@]}" && return 0
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  gone 20 "${pids[@]}" || true
}

# gone TENTHS PID...: waits up to TENTHS tenths of a second for the PIDs to exit.
gone() {
  local tenths="$1" pid alive
  shift
  for _ in $(seq "$tenths"); do
    alive=0
    for pid in "$@"; do running "$pid" && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  return 1
}

stop_all() {
  stop_components kwok kube-scheduler kube-controller-manager
  # The API server before etcd: its shutdown hangs for as long as etcd does not answer.
  stop_components kube-apiserver
  stop_components etcd
}

fail() { # fail MESSAGE LOG...: the message, then the end of each log.
  local message="$1" f
  shift
  log "$message"
  for f in "$@"; do
    echo "---- last lines of $f" >&2
    tail -n 40 "$f" >&2 || true
  done
  exit 1
}

# wait_for SECONDS WHAT LOG CHECK...: polls CHECK until it succeeds; gives up after SECONDS, or as
# soon as the process writing LOG has died.
wait_for() {
  local seconds="$1" what="$2" logfile="$3" name
  shift 3
  name="$(basename "$logfile" .log)"
  local deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    live_pid "$name" >/dev/null || fail "$name exited while waiting for $what" "$logfile"
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what not within $seconds s" "$logfile"
    sleep 0.2
  done
}

# curl would go through an https_proxy from the environment unless told not to; Go clients
# (kubectl, the components) never proxy loopback addresses.
apiserver_ready_on() {
  [ "$(curl --noproxy "*" -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$1/readyz" 2>/dev/null)" = ok ]
}

apiserver_ready() {
  [ -f "$dir/state.env" ] || return 1
  # shellcheck source=/dev/null
  . "$dir/state.env"
  apiserver_ready_on "$APISERVER_PORT"
}

healthy() {
  local name
  for name in "${components[@]}"; do live_pid "$name" >/dev/null || return 1; done
  apiserver_ready
}

print_state() {
  # shellcheck source=/dev/null
  . "$dir/state.env"
  # %q: the lines stay eval-able whatever DIR's name (plain for ordinary paths).
  printf 'K8S_DIR=%q\n' "$dir"
  printf 'K8S_API=%q\n' "https://127.0.0.1:$APISERVER_PORT"
  printf 'KUBECONFIG_ADMIN=%q\n' "$dir/admin.kubeconfig"
  printf 'KUBECONFIG_DRAFTD=%q\n' "$dir/draftd.kubeconfig"
}

# kubeconfig FILE USER-YAML: a kubeconfig for the API server with USER-YAML as its user's fields.
kubeconfig() {
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: k8s-up
    cluster:
      server: https://127.0.0.1:$APISERVER_PORT
      certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
  - name: user
    user:
$2
contexts:
  - name: k8s-up
    context:
      cluster: k8s-up
      user: user
current-context: k8s-up
EOF
  chmod 600 "$1.tmp"
  mv -f "$1.tmp" "$1" # whole or not at all, for readers of a running cluster's files
}
cert_user() {
  printf '      client-certificate-data: %s\n      client-key-data: %s' \
    "$(base64 -w0 "$pki/$1.crt")" "$(base64 -w0 "$pki/$1.key")"
}

kc() { "$kubectl" --kubeconfig "$dir/admin.kubeconfig" --request-timeout=10s "$@"; }
kd() { "$kubectl" --kubeconfig "$dir/draftd.kubeconfig" --request-timeout=10s "$@"; }

# The token works and carries deploy/rbac.yaml's rights, no more. (can-i on a cluster-scoped
# resource warns about the kubeconfig's default namespace: that warning is dropped.)
draftd_token_ok() {
  [ "$(kd auth can-i create namespaces 2>/dev/null)" = yes ] &&
    [ "$(kd auth can-i list secrets -n kube-system 2>/dev/null || true)" = no ]
}

# draftd's own identity: deploy/rbac.yaml, and a token of its ServiceAccount in draftd.kubeconfig.
# TokenRequest tokens expire (24 h here, accepted as asked) and die with their ServiceAccount.
draftd_identity() {
  kc get namespace draftd >/dev/null 2>&1 || kc create namespace draftd >/dev/null
  kc apply -f "$root/deploy/rbac.yaml" >/dev/null
  # The build namespace and draftd's rights there (deploy/build.yaml), for the image step's builds.
  kc apply -f "$root/deploy/build.yaml" >/dev/null
  wait_for 20 "ServiceAccount draftd/draftd" "$dir/logs/kube-apiserver.log" kc get serviceaccount draftd -n draftd
  local token
  token="$(kc create token draftd -n draftd --duration=24h)"
  kubeconfig "$dir/draftd.kubeconfig" "      token: $token"
  draftd_token_ok || fail "draftd's token does not hold exactly deploy/rbac.yaml's rights" "$dir/logs/kube-apiserver.log"
}

# Serialise start/stop/status on one DIR. The lock's descriptor is closed for every process started
# below, or the long-running ones would hold the lock forever.
exec 9>"$dir/.lock"
flock 9

case "$command" in
  stop)
    stop_all
    log "stopped ($dir)"
    exit 0
    ;;
  status)
    rc=0
    for name in "${components[@]}"; do
      if pid="$(live_pid "$name")"; then echo "$name running pid $pid"; else echo "$name not running"; rc=1; fi
    done
    if apiserver_ready; then echo "kube-apiserver ready"; else echo "kube-apiserver not ready"; rc=1; fi
    exit "$rc"
    ;;
  start) ;;
  *) echo "usage: $0 start|status|stop DIR" >&2; exit 2 ;;
esac

started_at=$(date +%s)

if healthy && [ -f "$dir/draftd.kubeconfig" ]; then
  "$root/scripts/install-tools.sh" >/dev/null
  kubectl="$root/.tools/bin/kubectl"
  # shellcheck source=/dev/null
  . "$dir/state.env"
  if ! draftd_token_ok; then
    log "draftd's token no longer works (expired, or its ServiceAccount was recreated): issuing a new one"
    draftd_identity
  fi
  log "already running in $dir"
  print_state
  echo "# k8s-up: already running"
  exit 0
fi
if ls "$dir"/pids/*.pid >/dev/null 2>&1 || [ -e "$dir/state.env" ]; then
  # A previous run crashed or was half stopped: nothing of it is reused, but its logs are kept.
  log "stale state in $dir: stopping what is left and starting afresh"
  stop_all
fi
rm -rf "$dir/etcd" "$dir/pki" "$dir/pids" "$dir/kwok-home" "$dir/logs.prev" "$dir/state.env" "$dir"/*.kubeconfig
[ -d "$dir/logs" ] && mv "$dir/logs" "$dir/logs.prev"
mkdir -p "$dir/pki" "$dir/pids" "$dir/logs" "$dir/kwok-home"

bin="$("$root/scripts/install-k8s.sh" | tail -n 1)"
"$root/scripts/install-tools.sh" >/dev/null
kubectl="$root/.tools/bin/kubectl"
for tool in "${components[@]}"; do
  [ -x "$bin/$tool" ] || { log "$bin/$tool missing (scripts/install-k8s.sh)"; exit 1; }
done

# Whatever fails from here on leaves nothing running behind.
finished=0
trap '[ "$finished" = 1 ] || { log "start failed; stopping what was started (logs in $dir/logs)"; stop_all; }' EXIT

# --- certificates ------------------------------------------------------------------------------
# A config of our own, so the machine's openssl.cnf adds no extensions of its own.
printf '[req]\ndistinguished_name = dn\n[dn]\n' >"$pki/openssl.cnf"
openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 -config "$pki/openssl.cnf" \
  -subj "/CN=draftd-k8s-up-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  2>/dev/null
# issue NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA above.
issue() {
  openssl req -new -nodes -newkey rsa:2048 -config "$pki/openssl.cnf" -subj "$2" \
    -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -sha256 -days 365 -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}
client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
issue apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
issue kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"
issue kube-scheduler "/CN=system:kube-scheduler" "$client_ext"
# kwok patches node and pod status and deletes pods everywhere: cluster-admin is the simple answer.
issue kwok "/O=system:masters/CN=kwok-controller" "$client_ext"
# kwok as the nodes' kubelet: its serving certificate, checked by the API server against this CA,
# and the API server's client certificate for it (kwok does not check it; a kubelet would).
issue kwok-server "/CN=kwok-kubelet" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
issue apiserver-kubelet-client "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client" "$client_ext"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
chmod 600 "$pki"/*.key

# --- processes ---------------------------------------------------------------------------------
# launch NAME ARGS...: runs $bin/NAME detached from this script (own session, no terminal, no
# inherited descriptors but the log) so it outlives the script and a Ctrl-C aimed at the caller.
# The PID file is written by the process that then execs the binary, so it is the binary's PID.
launch() {
  local name="$1"
  shift
  # shellcheck disable=SC2016 # $$ and "$@" belong to the inner bash
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/pids/$name.pid" "$bin/$name" "$@" \
    </dev/null >>"$dir/logs/$name.log" 2>&1 9>&- &
  for _ in $(seq 50); do [ -s "$dir/pids/$name.pid" ] && break; sleep 0.02; done
}

# Free loopback ports, all held at once while choosing so that they differ. Another process may
# still take one before our server binds it; start_servers retries with new ports when that happens.
free_ports() {
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

etcd_healthy() { curl --noproxy "*" -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }

# Starts etcd and the API server on fresh ports. Sets port_taken=1 when one of them lost its port
# to someone else (the caller retries); exits on any other failure. (It reports through a variable
# rather than its status because bash ignores `set -e` inside a function called as a condition.)
start_servers() {
  port_taken=0
  read -r ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT KWOK_PORT <<<"$(free_ports 4)"
  rm -rf "$dir/etcd"
  launch etcd \
    --name=k8s-up \
    --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="k8s-up=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync \
    --auto-compaction-retention=1 \
    --log-level=warn
  # Throwaway data: no fsync (above) makes every write, hence every API call, much faster.
  local deadline=$(($(date +%s) + ready_timeout))
  until etcd_healthy; do
    if ! live_pid etcd >/dev/null; then
      if grep -q "address already in use" "$dir/logs/etcd.log"; then
        port_taken=1
        return
      fi
      fail "etcd exited" "$dir/logs/etcd.log"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "etcd not healthy within $ready_timeout s" "$dir/logs/etcd.log"
    sleep 0.1
  done

  # --endpoint-reconciler-type=none: the `kubernetes` Service may not have a loopback endpoint
  # (the API server would log a validation error every 10 s); nothing in this cluster uses it.
  # --kubelet-preferred-address-types=InternalIP: pods/log goes to a node's address (127.0.0.1, where
  # kwok serves) instead of resolving the node's name through the machine's DNS.
  launch kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --secure-port="$APISERVER_PORT" \
    --cert-dir="$pki" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,ResourceQuota,DefaultStorageClass,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
    --service-cluster-ip-range="$service_cidr" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --profiling=false
  deadline=$(($(date +%s) + ready_timeout))
  until apiserver_ready_on "$APISERVER_PORT"; do
    if ! live_pid kube-apiserver >/dev/null; then
      if grep -q "address already in use" "$dir/logs/kube-apiserver.log"; then
        stop_all
        port_taken=1
        return
      fi
      fail "kube-apiserver exited" "$dir/logs/kube-apiserver.log"
    fi
    [ "$(date +%s)" -lt "$deadline" ] ||
      fail "kube-apiserver /readyz not ok within $ready_timeout s" "$dir/logs/kube-apiserver.log"
    sleep 0.2
  done
}

attempt=1
while :; do
  start_servers
  [ "$port_taken" = 1 ] || break
  [ "$attempt" -lt 3 ] || fail "could not get free ports for etcd and kube-apiserver" "$dir/logs/etcd.log" "$dir/logs/kube-apiserver.log"
  attempt=$((attempt + 1))
  log "a port was taken meanwhile; retrying with new ports"
  mv "$dir/logs" "$dir/logs.attempt$attempt" && mkdir -p "$dir/logs"
done
cat >"$dir/state.env" <<EOF
ETCD_CLIENT_PORT=$ETCD_CLIENT_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KWOK_PORT=$KWOK_PORT
BIN=$bin
EOF
log "kube-apiserver ready on https://127.0.0.1:$APISERVER_PORT after $(($(date +%s) - started_at)) s"

for who in admin kube-controller-manager kube-scheduler kwok; do
  kubeconfig "$dir/$who.kubeconfig" "$(cert_user "$who")"
done

# --secure-port=0: neither serves HTTPS, so neither needs a port, a serving certificate or
# delegated authentication; their health shows through the API (below). No leader election: one of each.
launch kube-controller-manager \
  --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
  --secure-port=0 \
  --leader-elect=false \
  --controllers='*' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" \
  --cluster-signing-key-file="$pki/ca.key" \
  --kube-api-qps=200 \
  --kube-api-burst=400
# (The default 20 requests per second makes namespace deletion and garbage collection crawl when
# tests create and delete many objects.)
launch kube-scheduler \
  --kubeconfig="$dir/kube-scheduler.kubeconfig" \
  --secure-port=0 \
  --leader-elect=false \
  --kube-api-qps=200 \
  --kube-api-burst=400

# kwok: only nodes annotated kwok.x-k8s.io/node=fake (ours) are managed, with their pods; it holds
# each node's Lease like a kubelet, so the node lifecycle controller keeps them Ready. It serves the
# kubelet's API on 127.0.0.1:KWOK_PORT (the nodes' kubelet endpoint) for pods/log, reading the
# Logs objects it watches (--enable-crds=Logs: their CRD must exist before it starts).
# HOME is its own because kwok also reads ~/.kwok/kwok.yaml when that exists.
cp "$root/scripts/k8s/kwok-stages.yaml" "$dir/kwok-stages.yaml"
kc apply -f "$root/scripts/k8s/kwok-logs-crd.yaml" >/dev/null
kc wait --for=condition=Established --timeout=20s crd/logs.kwok.x-k8s.io >/dev/null
HOME="$dir/kwok-home" launch kwok \
  --kubeconfig="$dir/kwok.kubeconfig" \
  --config="$dir/kwok-stages.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=40 \
  --server-address="127.0.0.1:$KWOK_PORT" \
  --node-port="$KWOK_PORT" \
  --tls-cert-file="$pki/kwok-server.crt" \
  --tls-private-key-file="$pki/kwok-server.key" \
  --enable-crds=Logs \
  --cidr="$pod_cidr"

# --- cluster content ---------------------------------------------------------------------------
# Nodes accept status on create: addresses, kubelet endpoint and allocatable are set here, kwok's
# node-initialize stage keeps them and adds the conditions. The pod CIDR per node keeps pod IPs
# distinct. Both nodes' InternalIP is 127.0.0.1: one kwok serves as the kubelet of both.
{
  for i in "${!nodes[@]}"; do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: ${nodes[i]}
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: ${nodes[i]}
    kubernetes.io/os: linux
spec:
  podCIDR: 127.244.$i.0/24
  podCIDRs: [127.244.$i.0/24]
status:
  addresses:
    - {type: InternalIP, address: 127.0.0.1}
    - {type: Hostname, address: ${nodes[i]}}
  daemonEndpoints:
    kubeletEndpoint: {Port: $KWOK_PORT}
  allocatable: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
EOF
  done
} | kc create -f - >/dev/null

nodes_ready() {
  local out
  out="$(kc get nodes -l type=kwok -o \
    jsonpath='{range .items[*]}{.metadata.name}:{.status.conditions[?(@.type=="Ready")].status}:{.spec.taints}{"\n"}{end}')"
  [ "$(grep -c ':True:$' <<<"$out")" = "${#nodes[@]}" ]
}
# Ready, and without the not-ready taint the API server put on them at creation (the node
# lifecycle controller lifts it once they are Ready), so pods need no toleration.
wait_for "$ready_timeout" "nodes Ready and untainted" "$dir/logs/kwok.log" nodes_ready

# The ServiceAccount and root-CA controllers of kube-controller-manager at work.
wait_for "$ready_timeout" "ServiceAccount default/default" "$dir/logs/kube-controller-manager.log" \
  kc get serviceaccount default -n default
wait_for "$ready_timeout" "ConfigMap default/kube-root-ca.crt" "$dir/logs/kube-controller-manager.log" \
  kc get configmap kube-root-ca.crt -n default
live_pid kube-scheduler >/dev/null || fail "kube-scheduler exited" "$dir/logs/kube-scheduler.log"

draftd_identity

finished=1
log "ready in $(($(date +%s) - started_at)) s ($dir)"
print_state
echo "# k8s-up: ready in $(($(date +%s) - started_at)) s"
