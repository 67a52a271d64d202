"""kubeadm configuration for a cluster's machines: init on the first control-plane machine, join
for every other machine, first boot and replacements alike.

What it decides:

* ``controlPlaneEndpoint`` is the load balancer (``<host>:6443``), so machines join through a
  stable address while control-plane machines come and go. It comes from the config
  (``kubernetes.controlPlaneEndpoint``) or from ``endpoint.json`` in the cluster's state dir,
  which infrastructure provisioning writes with :func:`record_api_endpoint` once the load
  balancer exists.
* The API server runs with ``authorization-mode: Node,RBAC``, ``profiling: false``, Secrets
  encrypted at rest (an ``EncryptionConfiguration`` with a generated 32-byte key, ``secretbox``
  or ``aescbc``, ``identity`` last so existing plain Secrets stay readable while being
  re-written), an optional audit policy, and Pod Security Admission defaults when the cluster
  configures ``podSecurity``.
* The bootstrap token (from the config by reference, or generated) and the encryption key are
  kept 0600 in the state dir. The token reaches the machine inside its user data, in a file
  readable by root only; the bootstrap script deletes it once the node has joined, and never
  passes a secret on a command line.
* The control-plane machines receive healer's CAs (:mod:`healer.provisioning.pki`), so kubeadm
  signs every machine's certificates with the same CA, and the EncryptionConfiguration: both by
  the SSH key push (:mod:`healer.provisioning.keydelivery`), never in user data; the bootstrap
  script waits for them. No ``certificateKey`` is needed: it exists for kubeadm's own certificate
  upload, which expires after two hours and would leave later replacements unable to join.
* The first control-plane machine applies the pod network after ``kubeadm init``: a pinned
  manifest (``kubernetes.cni``, Calico by default), applied only when its sha256 matches, with
  Calico's IPv4 pool set to ``networking.podSubnet``.

Which machine runs ``kubeadm init`` is recorded once, in ``kubeadm/init-node``: the first
control-plane machine rendered for the cluster. Every other machine, including a replacement of
that first one, joins.

The modules: :mod:`.endpoint` (where the API is), :mod:`.tokens` (the bootstrap token and the
encryption key), :mod:`.token_refresh` (the token kept valid in the cluster), :mod:`.documents`
(kubeadm's and the API server's configuration documents), :mod:`.machine` (one machine's files
and command) and ``bootstrap.sh`` (the script the machine runs, package data).
"""
