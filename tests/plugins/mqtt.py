"""MQTT test fixtures (mosquitto from Debian on a free loopback port).

``mosquitto``: a plain broker with persistence on, so :meth:`MosquittoBroker.restart` keeps
sessions and queued QoS 1 messages (SIGTERM makes mosquitto save its database on the way out).
``mosquitto_secure``: a broker that requires a user name and password, with one plain and one
TLS listener; the CA and server certificate are generated with ``cryptography``.

Both are module-scoped: a broker start costs ~50 ms but tests isolate themselves by client id,
so sharing one per test module keeps the suite fast. Tests that restart the broker take the
function-scoped ``mosquitto_restartable`` instead, so a restart never surprises another test.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ports import free_port

MOSQUITTO_USER = "healer"
MOSQUITTO_PASSWORD = "s3cret-test-password"


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    # Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mosquitto exited with {proc.returncode}: {log.read_text(errors='replace')}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {host}:{port} within 10 s")


@dataclass
class MosquittoBroker:
    """A mosquitto process with its own config, database and log in ``workdir``."""

    binary: str
    workdir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    tls_ca: Path | None = None
    username: str | None = None
    password: str | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            # SIGTERM saves too; the periodic save also covers a test that kills -9.
            "autosave_interval 5",
            "max_queued_messages 10000",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "set_tcp_nodelay true",
            # Run as whoever runs the tests: as root mosquitto would otherwise switch to the
            # 'mosquitto' user, which cannot read pytest's private tmp directories.
            f"user {getpass.getuser()}",
        ]
        if self.username is not None:
            assert self.password is not None
            passwd = self.workdir / "passwd"
            passwd.write_text(f"{self.username}:{_mosquitto_hash(self.password)}\n")
            passwd.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls_port is not None:
            assert self.tls_ca is not None
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls_ca}",
                f"certfile {self.workdir / 'server.pem'}",
                f"keyfile {self.workdir / 'server.key'}",
            ]
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        conf = self.write_config()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.host, self.port, self._proc, self.log_file)
        if self.tls_port is not None:
            _wait_listening(self.host, self.tls_port, self._proc, self.log_file)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # mosquitto saves its database on SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Stop (saving sessions and queued messages) and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def _mosquitto_hash(password: str) -> str:
    """A mosquitto 2.x password-file hash ($7$: PBKDF2-SHA512, 101 iterations, 12-byte salt).

    Written here rather than calling mosquitto_passwd so the fixture needs only the broker.
    """
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    b64 = base64.b64encode
    return f"$7$101${b64(salt).decode()}${b64(digest).decode()}"


def _write_certs(workdir: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost; returns the CA path."""
    pytest.importorskip("cryptography", reason="the TLS fixtures generate certificates with it")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("healer test CA"))
        .issuer_name(name("healer test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path = workdir / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    (workdir / "server.pem").write_bytes(cert.public_bytes(pem))
    key_path = workdir / "server.key"
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path


def _require_mosquitto() -> str:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return binary


def _run(broker: MosquittoBroker) -> Iterator[MosquittoBroker]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A shared anonymous broker (persistence on). Do not restart it; see mosquitto_restartable."""
    binary = _require_mosquitto()
    yield from _run(MosquittoBroker(binary=binary, workdir=tmp_path_factory.mktemp("mosquitto")))


@pytest.fixture
def mosquitto_restartable(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of the test's own, free to :meth:`~MosquittoBroker.restart`."""
    binary = _require_mosquitto()
    yield from _run(MosquittoBroker(binary=binary, workdir=tmp_path))


@pytest.fixture(scope="module")
def mosquitto_secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """Password required on both listeners; ``tls_port`` serves TLS with the ``tls_ca`` CA."""
    binary = _require_mosquitto()
    workdir = tmp_path_factory.mktemp("mosquitto-secure")
    ca = _write_certs(workdir)
    broker = MosquittoBroker(
        binary=binary,
        workdir=workdir,
        tls_port=free_port(),
        tls_ca=ca,
        username=MOSQUITTO_USER,
        password=MOSQUITTO_PASSWORD,
    )
    yield from _run(broker)
