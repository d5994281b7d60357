#!/usr/bin/env bash
# A single-node Kubernetes of its own on this machine, for `make k8s-test`:
#   cluster.sh up     start it (prints the kubeconfig path on its last line)
#   cluster.sh down   stop every process by its pid, remove mounts, bridge, namespaces, firewall
#                     chains and state, restore the sysctls the kubelet and kube-proxy change,
#                     then check that nothing is left (fails, naming it, otherwise)
#
# Most of it lives in directories of its own: $K8S_RUN (sockets, pids, containerd's state),
# $K8S_DATA (etcd, kubelet, containerd, PKI, logs); binaries come from build-binaries.sh's cache.
# What the components put elsewhere whatever their settings (network namespaces in
# /var/run/netns, /var/lib/kubelet, /var/lib/cni/results, /var/log/containers, kubepods cgroups,
# KUBE-* chains) is removed by `down` too.
# Its own containerd (own config, root, state and socket) never touches a Docker daemon's.
# Network: the bridge $BRIDGE carries the node IP $NODE_IP (API server, CoreDNS, and the host's
# PostgreSQL and Kafka in external mode) and the pods; a firewall chain drops pod traffic that
# would leave the bridge, so nothing outside this machine is ever a target.
set -euo pipefail

K8S_CACHE=${ORBILNOT_K8S_CACHE:-/var/cache/orbilnot-k8s}
BIN=$K8S_CACHE/bin
K8S_RUN=${ORBILNOT_K8S_RUN:-/run/orbilnot-k8s}
K8S_DATA=${ORBILNOT_K8S_DATA:-/var/lib/orbilnot-k8s}
BRIDGE=orbk8s0
NODE_IP=10.214.0.1
POD_CIDR=10.214.0.0/24
SERVICE_CIDR=10.215.0.0/24
KUBERNETES_SERVICE_IP=10.215.0.1
NODE_NAME=orbk8s
FIREWALL_CHAIN=ORBK8S-FWD
API_PORT=16443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
PAUSE_IMAGE=orbilnot.local/pause:1
SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables)

PKI=$K8S_DATA/pki
LOGS=$K8S_DATA/logs
PIDS=$K8S_RUN/pids
CONTAINERD_SOCKET=$K8S_RUN/containerd/containerd.sock
KUBECONFIG_ADMIN=$K8S_DATA/admin.kubeconfig

log() { echo "[cluster] $*" >&2; }

# ------------------------------------------------------------------------------------ helpers

start_process() { # name command...
  local name=$1
  shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name"
  log "$name started (pid $!)"
}

wait_for() { # description seconds command...
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

certificate() { # name subject [extensions]
  local name=$1 subject=$2 extensions=${3:-}
  openssl req -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subject" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "$extensions" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -out "$PKI/$name.crt" -extfile "$PKI/$name.ext" 2>/dev/null
}

kubeconfig() { # file cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: orbk8s
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: user
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: orbk8s
  context: {cluster: orbk8s, user: user, namespace: default}
current-context: orbk8s
EOF
}

# ------------------------------------------------------------------------------------------ up

up() {
  if [[ -d $K8S_RUN ]]; then
    # A run that was killed before its teardown: clean up after it, unless it is still running.
    local file
    for file in "$PIDS"/*; do
      if [[ -f $file ]] && kill -0 "$(cat "$file")" 2>/dev/null; then
        log "a cluster is running ($K8S_RUN, pid $(cat "$file")); run '$0 down' first"
        exit 1
      fi
    done
    log "$K8S_RUN is left from an interrupted run: tearing it down first"
    (down) || exit 1
  fi
  for binary in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns; do
    [[ -x $BIN/$binary ]] || { log "$BIN/$binary is missing: run build-binaries.sh"; exit 1; }
  done
  mkdir -p "$K8S_RUN" "$PIDS" "$K8S_DATA" "$PKI" "$LOGS" "$K8S_DATA/cni/net.d" "$K8S_DATA/cni/ipam"

  # The sysctls as they are now, restored by `down`.
  for key in "${SYSCTLS[@]}"; do
    if value=$(sysctl -n "$key" 2>/dev/null); then echo "$key=$value"; fi
  done >"$K8S_RUN/sysctls.saved"
  sysctl -qw net.ipv4.ip_forward=1
  # Network namespaces that exist already: `down` removes only the ones the CNI plugin adds.
  ls /var/run/netns 2>/dev/null >"$K8S_RUN/netns.before" || true
  # Likewise the nftables tables (iptables creates filter, nat and mangle on first use) and
  # /var/lib/kubelet.
  if command -v nft >/dev/null; then nft list tables >"$K8S_RUN/nft-tables.before"; fi
  if [[ -d /var/lib/kubelet ]]; then touch "$K8S_RUN/var-lib-kubelet.existed"; fi

  # -- network: the bridge and the firewall chain
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  iptables -N "$FIREWALL_CHAIN"
  iptables -A "$FIREWALL_CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  iptables -A "$FIREWALL_CHAIN" -i "$BRIDGE" -j DROP   # pods: nothing beyond the bridge
  iptables -A "$FIREWALL_CHAIN" -o "$BRIDGE" -s "$NODE_IP" -j ACCEPT
  iptables -A "$FIREWALL_CHAIN" -o "$BRIDGE" -j DROP   # nothing from outside into the pods
  iptables -I FORWARD 1 -j "$FIREWALL_CHAIN"

  # -- PKI: a CA, the API server's serving certificate, clients, service-account keys
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 2 \
    -subj "/CN=orbilnot-k8s-ca" 2>/dev/null
  certificate apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  certificate admin "/O=system:masters/CN=orbilnot-admin"
  certificate node "/O=system:nodes/CN=system:node:$NODE_NAME"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig "$KUBECONFIG_ADMIN" admin
  kubeconfig "$K8S_DATA/node.kubeconfig" node

  # -- etcd
  start_process etcd etcd --name orbk8s --data-dir "$K8S_DATA/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "orbk8s=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls ""
  wait_for etcd 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  # -- control plane
  start_process kube-apiserver "$BIN/kube-apiserver" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --client-ca-file="$PKI/ca.crt" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer="https://kubernetes.default.svc.cluster.local" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --profiling=false
  wait_for kube-apiserver 120 kubectl get --raw /readyz

  start_process kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_ADMIN" --leader-elect=false --bind-address=127.0.0.1 --secure-port=10357 \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=false --service-cluster-ip-range="$SERVICE_CIDR" \
    --profiling=false
  start_process kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$KUBECONFIG_ADMIN" --leader-elect=false --bind-address=127.0.0.1 --secure-port=10359 \
    --profiling=false

  # -- container runtime: containerd of our own
  cat >"$K8S_DATA/containerd.toml" <<EOF
version = 2
root = "$K8S_DATA/containerd"
state = "$K8S_RUN/containerd"
[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$K8S_RUN/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$K8S_DATA/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE here: without this every pod dies with "can't get final child's PID".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    # overlayfs: a container shares its image's layers ("native" copies the whole image for each).
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$K8S_DATA/cni/net.d"
EOF
  cat >"$K8S_DATA/cni/net.d/10-orbk8s.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "orbk8s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$K8S_DATA/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.214.0.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  start_process containerd containerd --config "$K8S_DATA/containerd.toml"
  wait_for containerd 60 ctr --address "$CONTAINERD_SOCKET" version
  for archive in "$K8S_CACHE"/images/*.tar; do
    [[ -f $archive ]] || continue
    log "importing $(basename "$archive")"
    # Unpacked into the CRI's snapshotter now: the CRI creates containers from unpacked images only.
    ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import --snapshotter overlayfs "$archive" >/dev/null
  done

  # -- CoreDNS on the host, the kubelet's cluster DNS
  cat >"$K8S_DATA/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_ADMIN
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  start_process coredns "$BIN/coredns" -conf "$K8S_DATA/Corefile"

  # -- node: kubelet and kube-proxy
  cat >"$K8S_DATA/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10258
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
podLogsDir: $K8S_DATA/pod-logs
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
resolvConf: /etc/resolv.conf
EOF
  start_process kubelet "$BIN/kubelet" --config="$K8S_DATA/kubelet.yaml" \
    --kubeconfig="$K8S_DATA/node.kubeconfig" --root-dir="$K8S_DATA/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  cat >"$K8S_DATA/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$KUBECONFIG_ADMIN"}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start_process kube-proxy "$BIN/kube-proxy" --config="$K8S_DATA/kube-proxy.yaml"

  wait_for "node $NODE_NAME Ready" 180 bash -c \
    "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
  wait_for "default ServiceAccount" 60 kubectl get serviceaccount default
  log "cluster up: node $NODE_NAME Ready at $NODE_IP"
  echo "$KUBECONFIG_ADMIN"
}

# ---------------------------------------------------------------------------------------- down

stop_pid_file() { # name
  local file=$PIDS/$1 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

down() {
  # Everything below is attempted whatever fails before it: a teardown that stops at the first
  # missing thing (a grep finding nothing, under pipefail) would leave the rest behind.
  set +e +o pipefail
  # The kubelet first, so it does not restart what is being removed; containers via containerd.
  stop_pid_file kubelet
  if [[ -S $CONTAINERD_SOCKET ]]; then
    # Every task (container process) killed and removed, which unmounts its root filesystem.
    # Containers and snapshots need no removal of their own: their directories go below.
    local ctr_=(timeout 30 ctr --address "$CONTAINERD_SOCKET" -n k8s.io)
    for task in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do "${ctr_[@]}" tasks kill -s KILL "$task" 2>/dev/null; done
    sleep 1
    for task in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do "${ctr_[@]}" tasks rm -f "$task" 2>/dev/null; done
  fi
  for name in kube-proxy coredns kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    stop_pid_file "$name"
  done
  # containerd-shim processes of our containerd (their command line names our socket's directory).
  for pid in $(pgrep -f "containerd-shim.*-address $CONTAINERD_SOCKET" || true); do kill -KILL "$pid" 2>/dev/null || true; done

  # The pod sandboxes still there (their network was never torn down by the CNI plugin).
  local sandboxes
  sandboxes=$(ls "$K8S_RUN/containerd/io.containerd.grpc.v1.cri/sandboxes" 2>/dev/null)

  # Mounts under our directories, deepest first (volumes, netns, snapshots, shm).
  for root in "$K8S_DATA" "$K8S_RUN"; do
    grep -F " $root" /proc/self/mounts | awk '{print $2}' | sort -r | while read -r mountpoint; do
      umount -l "$mountpoint" 2>/dev/null || true
    done
  done
  # Network namespaces the CNI plugin left (containerd 1.6 keeps them in /var/run/netns).
  for netns in $(ls /var/run/netns 2>/dev/null | grep '^cni-' || true); do
    grep -qx "$netns" "$K8S_RUN/netns.before" 2>/dev/null && continue
    umount -l "/var/run/netns/$netns" 2>/dev/null || true
    rm -f "/var/run/netns/$netns"
  done
  [[ -s $K8S_RUN/netns.before ]] || rmdir /var/run/netns 2>/dev/null || true
  # The pods' ends of their veth pairs still on our bridge (a pod's network namespace can outlive
  # its processes, and its pair with it), then the bridge itself.
  BRIDGE_PORTS=$(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)
  for veth in $BRIDGE_PORTS; do ip link del "$veth" 2>/dev/null; done
  ip link del "$BRIDGE" 2>/dev/null

  # Firewall: our chain, and every chain kube-proxy and the kubelet created (all named KUBE-*),
  # for IPv4 and IPv6; then the nftables tables that only came into being for them.
  iptables -D FORWARD -j "$FIREWALL_CHAIN" 2>/dev/null
  iptables -F "$FIREWALL_CHAIN" 2>/dev/null
  iptables -X "$FIREWALL_CHAIN" 2>/dev/null
  for tool in iptables ip6tables; do
    for table in filter nat mangle; do
      "$tool" -t "$table" -S 2>/dev/null | grep -E -- '^-A [A-Z]+ .*-j KUBE-' | sed 's/^-A /-D /' | while read -r rule; do
        eval "$tool -t $table $rule" 2>/dev/null
      done
      for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
        "$tool" -t "$table" -F "$chain" 2>/dev/null
      done
      for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
        "$tool" -t "$table" -X "$chain" 2>/dev/null
      done
    done
  done
  if command -v nft >/dev/null && [[ -f $K8S_RUN/nft-tables.before ]]; then
    nft list tables 2>/dev/null | while read -r _ family name; do
      grep -qx "table $family $name" "$K8S_RUN/nft-tables.before" && continue
      # Only when nothing else put a rule or a chain of its own there meanwhile.
      if ! nft list table "$family" "$name" | grep -vE '^\s*(table|chain|type|policy|\}|$)' | grep -q .; then
        nft delete table "$family" "$name"
      fi
    done
  fi
  # The kubelet keeps its serving certificate and device-plugin socket in /var/lib/kubelet
  # whatever its --root-dir.
  [[ -f $K8S_RUN/var-lib-kubelet.existed ]] || rm -rf /var/lib/kubelet

  # The pods' cgroups (cgroupfs driver: /kubepods in every v1 hierarchy), deepest first.
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -d ${hierarchy}kubepods ]] || continue
    find "${hierarchy}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # The kubelet's links to container logs (always in /var/log/containers, whatever podLogsDir).
  find /var/log/containers -maxdepth 1 -type l -lname "$K8S_DATA/*" -delete 2>/dev/null || true
  rmdir /var/log/containers 2>/dev/null || true
  # libcni caches each attachment's result under /var/lib/cni/results, named after the network
  # and the sandbox (ours, and the CRI's loopback network for each of our sandboxes).
  rm -f /var/lib/cni/results/orbk8s-* 2>/dev/null
  for sandbox in $sandboxes; do rm -f /var/lib/cni/results/cni-loopback-"$sandbox"-*; done
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true

  if [[ -f $K8S_RUN/sysctls.saved ]]; then
    while IFS= read -r setting; do sysctl -qw "$setting" || true; done <"$K8S_RUN/sysctls.saved"
  fi
  # Logs are kept for a failed run's diagnosis until the next `up`.
  if [[ -d $LOGS ]]; then
    rm -rf "${K8S_DATA}.last-logs"
    cp -r "$LOGS" "${K8S_DATA}.last-logs" 2>/dev/null || true
  fi
  # What the sysctls were, for the check below (the state directory is removed first).
  local saved_sysctls
  saved_sysctls=$(mktemp)
  cp "$K8S_RUN/sysctls.saved" "$saved_sysctls" 2>/dev/null
  rm -rf "$K8S_RUN" "$K8S_DATA"
  verify_clean "$saved_sysctls"
  local clean=$?
  rm -f "$saved_sysctls"
  ((clean == 0)) || return 1
  log "cluster down"
}

# Exits non-zero, naming each, if anything of the cluster is left on the machine.
verify_clean() { # saved-sysctls-file
  local left=()
  local processes
  processes=$(pgrep -af "$K8S_DATA|$K8S_RUN" | grep -v "pgrep" || true)
  [[ -z $processes ]] || left+=("processes: $processes")
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
  local port
  for port in ${BRIDGE_PORTS:-}; do
    ip link show "$port" >/dev/null 2>&1 && left+=("veth $port")
  done
  grep -qE " ($K8S_DATA|$K8S_RUN)" /proc/self/mounts && left+=("mounts under $K8S_DATA or $K8S_RUN")
  local tool
  for tool in iptables ip6tables; do
    for table in filter nat mangle; do
      "$tool" -t "$table" -S 2>/dev/null | grep -qE "KUBE-|$FIREWALL_CHAIN" && left+=("$tool $table rules")
    done
  done
  compgen -G "/sys/fs/cgroup/*/kubepods" >/dev/null && left+=("kubepods cgroups")
  compgen -G "/var/lib/cni/results/*" >/dev/null && left+=("/var/lib/cni/results")
  [[ -d $K8S_RUN || -d $K8S_DATA ]] && left+=("state directories")
  if [[ -s $1 ]]; then
    while IFS='=' read -r key value; do
      [[ $(sysctl -n "$key") == "$value" ]] || left+=("sysctl $key=$(sysctl -n "$key"), was $value")
    done <"$1"
  fi
  if ((${#left[@]})); then
    log "left behind:"
    printf '  %s\n' "${left[@]}" >&2
    return 1
  fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
