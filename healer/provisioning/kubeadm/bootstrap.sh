#!/bin/bash
# healer-bootstrap: prepare this machine for Kubernetes and run kubeadm (init or join).
# Installed by healer's cloud-init user data. Safe to run again: it stops once the node is in the
# cluster. Secrets are read from root-only files, never passed on a command line. A control-plane
# machine's keys are not in its user data: healer pushes them over SSH, and this script waits.
set -euo pipefail
# HEALER_BOOTSTRAP_ROOT: an alternative root for the files below, for tests only.
ROOT="${HEALER_BOOTSTRAP_ROOT:-}"
# shellcheck source=/dev/null
. "$ROOT/etc/healer/kubeadm/bootstrap.env"

# The pod network, applied once by the first control-plane machine: a pinned manifest, applied
# only when its sha256 is the one healer rendered.
install_cni() {
  local manifest applied="$ROOT/etc/healer/kubeadm/cni-applied"
  if [ -z "${CNI_MANIFEST_URL:-}" ] || [ -f "$applied" ]; then
    return 0
  fi
  manifest="$(mktemp)"
  curl -fsSL --proto '=https' --tlsv1.2 --retry 5 --retry-delay 10 \
    -o "$manifest" "$CNI_MANIFEST_URL"
  if ! echo "$CNI_MANIFEST_SHA256  $manifest" | sha256sum --check --status; then
    echo "healer-bootstrap: $CNI_MANIFEST_URL does not have sha256 $CNI_MANIFEST_SHA256;" \
      "the pod network is not installed" >&2
    rm -f "$manifest"
    exit 4
  fi
  # Calico's IPv4 pool is the cluster's pod subnet (kubeadm's networking.podSubnet).
  sed -i -e 's|# - name: CALICO_IPV4POOL_CIDR|- name: CALICO_IPV4POOL_CIDR|' \
    -e "s|#   value: \"192.168.0.0/16\"|  value: \"${POD_SUBNET}\"|" "$manifest"
  for attempt in 1 2 3 4 5; do
    if kubectl --kubeconfig "$ROOT/etc/kubernetes/admin.conf" apply -f "$manifest"; then
      break
    fi
    if [ "$attempt" -eq 5 ]; then
      echo "healer-bootstrap: kubectl apply of the pod network failed $attempt times" >&2
      rm -f "$manifest"
      exit 4
    fi
    sleep "${JOIN_RETRY_DELAY:-30}"
  done
  rm -f "$manifest"
  touch "$applied"
  echo "healer-bootstrap: pod network applied from $CNI_MANIFEST_URL"
}

# Every file the key push delivered, listed in KEYS_READY (which the push writes last).
keys_complete() {
  local path
  [ -s "$ROOT$KEYS_READY" ] || return 1
  while IFS= read -r path; do
    [ -s "$ROOT$path" ] || return 1
  done < "$ROOT$KEYS_READY"
}

wait_for_keys() {
  local waited=0 poll="${KEY_POLL:-5}"
  if [ -z "${KEYS_READY:-}" ] || keys_complete; then
    return 0
  fi
  echo "healer-bootstrap: waiting up to ${KEY_WAIT}s for the control-plane keys healer" \
    "pushes over SSH ($KEYS_READY)"
  until keys_complete; do
    if [ "$waited" -ge "$KEY_WAIT" ]; then
      echo "healer-bootstrap: no keys after ${KEY_WAIT}s: healer could not reach this" \
        "machine over SSH (see docs/provisioning.md, 'Key delivery'); run" \
        "healer-bootstrap again once they are there" >&2
      exit 3
    fi
    sleep "$poll"
    waited=$((waited + (poll > 0 ? poll : 1)))
    if [ $((waited % 60)) -eq 0 ]; then
      echo "healer-bootstrap: still waiting for the keys (${waited}s)"
    fi
  done
  echo "healer-bootstrap: keys received"
}

if [ -f "$ROOT/etc/kubernetes/kubelet.conf" ]; then
  echo "healer-bootstrap: already part of the cluster"
  rm -f "$KUBEADM_CONFIG"
  if [ "$KUBEADM_MODE" = init ]; then
    install_cni
  fi
  exit 0
fi

swapoff -a
sed -i '/\sswap\s/ s/^#*/#/' "$ROOT/etc/fstab"
modprobe overlay
modprobe br_netfilter
sysctl --system >/dev/null

if [ "$INSTALL_PACKAGES" = "true" ]; then
  minor="${KUBERNETES_VERSION%.*}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q apt-transport-https ca-certificates curl gpg containerd
  install -d -m 0755 /etc/apt/keyrings
  curl -fsSL "https://pkgs.k8s.io/core:/stable:/${minor}/deb/Release.key" \
    | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
  repo="https://pkgs.k8s.io/core:/stable:/${minor}/deb/"
  echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] ${repo} /" \
    > /etc/apt/sources.list.d/kubernetes.list
  apt-get update -q
  apt-get install -y -q "kubelet=${KUBERNETES_VERSION#v}-*" "kubeadm=${KUBERNETES_VERSION#v}-*" \
    "kubectl=${KUBERNETES_VERSION#v}-*"
  # Kubernetes upgrades are deliberate: unattended-upgrades must not move these packages.
  apt-mark hold kubelet kubeadm kubectl
  mkdir -p /etc/containerd
  containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' \
    > /etc/containerd/config.toml
  systemctl restart containerd
  systemctl enable kubelet
fi

wait_for_keys

case "$KUBEADM_MODE" in
  init) kubeadm init --config "$KUBEADM_CONFIG" --skip-token-print ;;
  join)
    # Machines created together with the first control-plane machine wait for its API to
    # answer through the load balancer: retry, cleaning up a half-done attempt each time.
    for attempt in $(seq 1 "$JOIN_ATTEMPTS"); do
      if kubeadm join --config "$KUBEADM_CONFIG"; then
        break
      fi
      if [ "$attempt" -eq "$JOIN_ATTEMPTS" ]; then
        echo "healer-bootstrap: kubeadm join failed $attempt times" >&2
        exit 1
      fi
      kubeadm reset --force || true
      sleep "${JOIN_RETRY_DELAY:-30}"
    done
    ;;
  *) echo "healer-bootstrap: unknown mode '$KUBEADM_MODE'" >&2; exit 2 ;;
esac
# The file holds the bootstrap token; the node no longer needs it.
rm -f "$KUBEADM_CONFIG"
if [ "$KUBEADM_MODE" = init ]; then
  install_cni
fi
echo "healer-bootstrap: $KUBEADM_MODE done"
