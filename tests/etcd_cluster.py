"""A real etcd cluster for tests: Debian ``etcd-server`` members on free loopback ports in a
temporary directory, TLS for clients and peers with a CA the test makes, client certificates
required (as kubeadm sets etcd up).

``EtcdCluster.start(n)`` bootstraps ``n`` members at once (``--initial-cluster-state new``);
``join(name)`` adds one the way ``kubeadm join --control-plane`` does (member add through a
healthy member, then started with ``--initial-cluster-state existing``); ``kill(name)`` is a
machine losing power. Every process is SIGKILLed at ``stop()`` (the fixture's teardown).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from healer.etcd import DirectEndpoints, EtcdClient, EtcdTls
from healer.lab.etcd import (
    EtcdProcess,
    etcd_binary,
    join_member,
    wait_healthy,
    write_member_tls,
)
from healer.provisioning.etcd_access import issue_etcd_cert
from healer.provisioning.pki import CertKey
from tests.ports import free_port

# The members the fixture starts with, named as kubeadm names them: after their nodes.
MEMBERS = ("cp-1", "cp-2", "cp-3")


def make_ca() -> CertKey:
    """The test's own etcd CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-etcd-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert, cert.public_bytes(serialization.Encoding.PEM), key)


class EtcdCluster:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.ca = make_ca()
        self.tls = write_member_tls(self.ca, root / "tls", client_name="test-admin")
        self.procs: dict[str, EtcdProcess] = {}
        self.client = EtcdClient(
            cluster="test", endpoints=DirectEndpoints([]), tls=self.tls, timeout=2.0
        )

    def client_tls(self) -> EtcdTls:
        """A client certificate for healer, signed by the test's CA."""
        leaf = issue_etcd_cert(self.ca, common_name="healer-etcd-client")
        return EtcdTls(self.ca.cert_pem, leaf.cert_pem, leaf.key_pem())

    def endpoints(self) -> list[str]:
        return [p.client_url for p in self.procs.values() if p.running]

    def _proc(self, name: str) -> EtcdProcess:
        proc = EtcdProcess(
            binary=self.binary,
            name=name,
            data_dir=self.root / "data" / name,
            tls_dir=self.root / "tls",
            client_port=free_port(),
            peer_port=free_port(),
        )
        self.procs[name] = proc
        return proc

    def _reconnect(self) -> None:
        self.client._endpoints = DirectEndpoints(self.endpoints())

    async def start(self, names: list[str]) -> None:
        procs = [self._proc(n) for n in names]
        initial = ",".join(f"{p.name}={p.peer_url}" for p in procs)
        for p in procs:
            p.start(initial_cluster=initial, state="new")
        self._reconnect()
        await wait_healthy(self.client, names, timeout=20.0)

    async def join(self, name: str) -> None:
        """A replacement machine's ``kubeadm join --control-plane``."""
        proc = self._proc(name)
        await join_member(self.client, proc)
        self._reconnect()

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    async def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        await self.client.close()


@pytest.fixture
async def etcd_cluster(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary (Debian package etcd-server)")
    cluster = EtcdCluster(binary, tmp_path / "etcd")
    try:
        async with asyncio.timeout(30):
            await cluster.start(list(MEMBERS))
        yield cluster
    finally:
        await cluster.stop()
