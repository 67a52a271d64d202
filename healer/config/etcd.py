"""How healer reaches a cluster's etcd (docs/configuration.md, ``etcd``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from healer.config.types import ConfigModel as _Model
from healer.config.types import Duration


class EtcdConfig(_Model):
    """The cluster's stacked etcd: read by the quorum guard, changed by control-plane repairs.

    ``mode``:

    * ``portforward`` -- through the Kubernetes API (``pods/portforward`` to the static pod
      ``<podPrefix><node>`` in ``namespace``, port ``port``), the way Cluster API reaches etcd:
      the platform's firewall lets the management host reach the API load balancer and SSH only,
      never the members' private addresses. healer opens one loopback listener per
      control-plane node and tunnels each connection over the API's websocket.
    * ``direct`` -- ``endpoints`` (``https://host:port``) are reachable as they are (the lab, the
      tests, a management host inside the private network). The member list's client URLs are
      used too, so a replaced member is found without a config change.
    * ``off`` -- healer does not read etcd; control-plane quorum is judged by the Node view only
      (the default, for clusters healer did not provision).

    TLS: healer mints a client certificate from the cluster's etcd CA (the one ``healer apply``
    created, ``<state dir>/clusters/<cluster>/pki/etcd/ca.{crt,key}``) unless ``caFile``,
    ``certFile`` and ``keyFile`` name one.
    """

    mode: Literal["off", "direct", "portforward"] = Field(
        "off", description="off | direct (endpoints) | portforward (through the Kubernetes API)"
    )
    endpoints: tuple[str, ...] = Field(
        (), description="direct mode: client URLs, e.g. https://10.0.1.11:2379"
    )
    namespace: str = Field("kube-system", description="portforward: the etcd pods' namespace")
    pod_prefix: str = Field(
        "etcd-", alias="podPrefix", description="portforward: the pod is <podPrefix><node name>"
    )
    port: int = Field(2379, ge=1, le=65535, description="portforward: etcd's client port")
    ca_file: Path | None = Field(
        None, alias="caFile", description="etcd CA; default: the one healer apply created"
    )
    cert_file: Path | None = Field(
        None, alias="certFile", description="client certificate; default: minted at start"
    )
    key_file: Path | None = Field(None, alias="keyFile", description="its key")
    timeout: Duration = Field(5.0, gt=0, le=120, description="per etcd request")

    @model_validator(mode="after")
    def _consistent(self) -> EtcdConfig:
        if self.mode == "direct" and not self.endpoints:
            raise ValueError("etcd.mode direct needs etcd.endpoints (https://host:port, ...)")
        for url in self.endpoints:
            if not url.startswith(("https://", "http://")) or url.count(":") != 2:
                raise ValueError(f"etcd endpoint {url!r} is not scheme://host:port")
        files = (self.ca_file, self.cert_file, self.key_file)
        if any(files) and not all(files):
            raise ValueError("etcd.caFile, certFile and keyFile go together (all three or none)")
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "off"
