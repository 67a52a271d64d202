"""An HTTP fake of the Kubernetes API server that answers like the real one.

It owns a small in-memory cluster (nodes, pods, PodDisruptionBudgets, node leases, namespaces,
Secrets, RBAC roles and bindings), serves it over real HTTP with the real JSON shapes (objects,
lists, ``Status`` errors, newline-delimited watch streams with resourceVersions and ``410
Expired``), and plays the controllers healer depends on (node lifecycle, the kubelet's part of
pod deletion, non-graceful node shutdown, pod garbage collection, the garbage collector
of owned objects).

The conformance suite (``tests/conformance/``, docs/testing.md) runs the same tests against it
and a real kube-apiserver + kube-controller-manager: where they differ, the fake is fixed.

Tests and the lab use it over HTTP through the real client, and drive it directly through the
state methods of :class:`~healer.lab.apiserver.server.FakeApiServer`. It never imports the
Kubernetes client, so the adapter in :mod:`healer.kube` is tested against bytes on a socket,
not against itself.

Modules, from the wire down:

- ``server``: the server tests hold: start/stop, kubeconfig, state methods, the front door
  (request counters, injected faults, unreachability, authentication);
- ``routes``: URL dispatch to the verbs, the watch stream and the eviction subresource;
- ``watch``: the watch stream over HTTP;
- ``verbs``: create, get, list, update, patch, delete with the apiserver's semantics;
- ``admission``: the PodSecurity admission plugin (baseline and restricted by namespace label);
- ``eviction``: PodDisruptionBudget status and the eviction subresource;
- ``lifecycle``: the node lifecycle controller (with its zone states), the kubelet's part of pod
  deletion, pod GC (a deleted node's pods after its quarantine);
- ``garbage``: the garbage collector: objects whose owners are gone, after the DELETE;
- ``store``: objects, resourceVersions, history and compaction, watch fan-out;
- ``objects``, ``taints``, ``selectors``, ``patches``: pure helpers on object dicts;
- ``resources``, ``errors``: the resource table, paths, wire formats, ``Status`` errors.
"""
