#!/bin/bash
# healer-bootstrap: prepare this machine for Kubernetes and run kubeadm (init or join).
# Installed by healer's cloud-init user data. Safe to run again: it stops once the node is in the
# cluster. Secrets are read from root-only files, never passed on a command line.
set -euo pipefail
# HEALER_BOOTSTRAP_ROOT: an alternative root for the files below, for tests only.
ROOT="${HEALER_BOOTSTRAP_ROOT:-}"
# shellcheck source=/dev/null
. "$ROOT/etc/healer/kubeadm/bootstrap.env"

if [ -f "$ROOT/etc/kubernetes/kubelet.conf" ]; then
  echo "healer-bootstrap: already part of the cluster"
  rm -f "$KUBEADM_CONFIG"
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
echo "healer-bootstrap: $KUBEADM_MODE done"
