"""healer's etcd adapter (``aetcd`` + ``grpc`` live in :mod:`healer.etcd.client` only): the
member list with health, member removal and addition, over TLS with a client certificate."""

from healer.etcd.client import DirectEndpoints, Endpoints, EtcdClient, EtcdTls, EtcdUnavailable

__all__ = ["DirectEndpoints", "Endpoints", "EtcdClient", "EtcdTls", "EtcdUnavailable"]
