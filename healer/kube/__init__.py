"""The Kubernetes seam: the only package in healer that imports ``kubernetes_asyncio``.

It owns talking to one cluster's API server and turning what comes back into healer's own frozen
records and typed errors. Nothing it returns or raises is a ``kubernetes_asyncio`` type:

* the API cannot be reached, answers 5xx, or throttles with 429 (except an eviction refused by a
  disruption budget) -> :class:`healer.errors.KubeUnavailable` (retry later);
* a watch's resourceVersion is too old (410 Gone / ``Expired``) -> :class:`healer.kube.watch.
  WatchExpired` (re-list);
* any other unexpected 4xx -> :class:`healer.errors.PermanentError` naming the object;
* expected answers are values, not errors: a missing node is ``None`` / ``False``, an eviction
  blocked by a PodDisruptionBudget is :attr:`healer.kube.records.EvictResult.BLOCKED` with the
  budget's message.

One module per job; :class:`healer.kube.client.KubeClient` puts them together:

===================  =========================================================================
``records``          the frozen records (nodes, pods, leases, namespaces, RBAC, secrets, watch
                     events, taints), JSON -> record parsing and Kubernetes time formats; pure
``connection``       kubeconfig loading, the API client, one request and its typed errors
``watch``            list + watch of nodes and node leases (what the kube-watch source reads)
``nodes``            node operations: get, cordon, labels, taints, delete
``pods``             pods on a node, eviction (PodDisruptionBudgets), pod deletion
``kubelet``          the kubelet's side: register a node, post Ready, renew its lease (lab)
``access``           namespaces, secrets and RBAC objects (cluster policy, provisioning)
``client``           :class:`~healer.kube.client.KubeClient`: all of the above for one cluster
===================  =========================================================================

Requests go through the generated API methods with ``_preload_content=False`` so that bodies are
read as plain JSON (the same bytes a real apiserver or :mod:`healer.lab.apiserver` sends) and the
status code is ours to interpret. Watches are streamed line by line from the same raw response
rather than through ``kubernetes_asyncio.watch.Watch``, which builds its own default ApiClient,
silently retries 410 once and resumes on its own; healer wants to see every 410 and decide.
"""
