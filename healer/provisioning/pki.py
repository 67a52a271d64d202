"""The cluster's private CA and the Kubernetes API serving certificate, kept in the state dir.

healer generates, once per cluster, everything kubeadm would otherwise generate on the first
control-plane machine and that every control-plane machine must share:

* the cluster CA (``ca.crt``/``ca.key``), which signs the API serving certificates and the
  kubelet client certificates, and which kubectl and healer trust;
* the front-proxy CA and the etcd CA;
* the service-account signing key pair (``sa.key``/``sa.pub``).

Because healer holds them, a replacement control-plane machine gets the same CAs as the first
one (the same mechanism Cluster API's kubeadm bootstrap uses), and kubeconfigs stay valid while
every control-plane machine is replaced over time.

The API serving certificate's subject alternative names are computed in one place
(:func:`api_server_sans`): the load balancer's address and DNS name, the control-plane private
IPs, the in-cluster names ``kubernetes``, ``kubernetes.default``, ``kubernetes.default.svc``,
``kubernetes.default.svc.<domain>`` and the first address of the service subnet. The same list
goes into kubeadm's ``apiServer.certSANs`` so that the certificate each control-plane machine
signs for itself with this CA carries them too.

Everything is idempotent: existing files are loaded and checked, never silently replaced. A
serving certificate is re-issued only when its names changed, its CA changed, or it is close to
expiry. Private keys are written 0600 from creation (:mod:`healer.provisioning.keystore`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from healer.errors import ConfigError
from healer.provisioning.keystore import (
    ClusterState,
    private_value,
    read_private,
    replace_private,
    replace_public,
    write_public,
)

log = structlog.get_logger("healer.provisioning")

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
# Clocks of freshly booted machines are often a little behind.
_BACKDATE = dt.timedelta(hours=1)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CaSpec:
    """One CA kubeadm expects, by its file names under /etc/kubernetes/pki."""

    cert: str
    key: str
    common_name: str


CLUSTER_CA = CaSpec("ca.crt", "ca.key", "kubernetes")
FRONT_PROXY_CA = CaSpec("front-proxy-ca.crt", "front-proxy-ca.key", "front-proxy-ca")
ETCD_CA = CaSpec("etcd/ca.crt", "etcd/ca.key", "etcd-ca")
SHARED_CAS = (CLUSTER_CA, FRONT_PROXY_CA, ETCD_CA)
SA_KEY, SA_PUB = "sa.key", "sa.pub"


@dataclass(frozen=True)
class CertKey:
    cert: x509.Certificate
    cert_pem: bytes
    key: PrivateKey

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        return f"CertKey(subject={self.cert.subject.rfc4514_string()!r})"

    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class ApiSans:
    dns: tuple[str, ...]
    ips: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.dns, *self.ips)


@dataclass(frozen=True)
class PkiFile:
    """A file for /etc/kubernetes/pki on a control-plane machine."""

    path: str  # relative to /etc/kubernetes/pki
    content: bytes
    private: bool

    def __repr__(self) -> str:
        return f"PkiFile({self.path!r}, private={self.private})"


def api_server_sans(
    *,
    endpoint_host: str,
    control_plane_ips: Iterable[str] = (),
    service_subnet: str = "10.96.0.0/12",
    dns_domain: str = "cluster.local",
    extra: Iterable[str] = (),
) -> ApiSans:
    """The names the API serving certificate must carry. Order is stable; no duplicates."""
    dns: list[str] = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{dns_domain}",
    ]
    network = ipaddress.ip_network(service_subnet, strict=False)
    ips: list[str] = [str(next(network.hosts()))]
    for name in (endpoint_host, *control_plane_ips, *extra):
        if not name:
            continue
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name.lower().rstrip("."))
    return ApiSans(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)))


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _same_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _san_set(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(n) for n in ext.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return names


def ca_cert_hash(cert: x509.Certificate) -> str:
    """kubeadm's discovery pin: ``sha256:`` of the CA's DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


class ClusterPki:
    """The PKI of one cluster, under ``<state_dir>/clusters/<cluster>/pki``."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._dir = state.dir("pki")

    @property
    def directory(self) -> Path:
        return self._dir

    def _file(self, relative: str) -> Path:
        parts = relative.split("/")
        return self._state.path("pki", *parts)

    # -------------------------------------------------------------- CAs

    def ca(self, spec: CaSpec = CLUSTER_CA, *, now: dt.datetime | None = None) -> CertKey:
        """Load the CA, or create it the first time. A CA whose certificate and key do not
        belong together is an error, never a silent re-creation (that would cut every machine
        and kubeconfig of the cluster off)."""
        key_path, cert_path = self._file(spec.key), self._file(spec.cert)
        if cert_path.exists() and read_private(key_path) is None:
            raise ConfigError(
                f"{cert_path} exists but its key {key_path} is missing; restore the key (a new "
                "CA would lock out every machine of the cluster)"
            )
        key_pem, key_created = private_value(
            key_path, lambda: _key_pem(ec.generate_private_key(ec.SECP256R1()))
        )
        key = _load_key(key_path, key_pem)
        if not cert_path.exists():
            cert = _ca_certificate(key, spec.common_name, now or dt.datetime.now(dt.UTC))
            write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        cert_pem = cert_path.read_bytes()
        cert = _load_cert(cert_path, cert_pem)
        if not _same_key(cert, key):
            raise ConfigError(f"{cert_path} does not belong to the key {key_path}")
        if key_created:
            log.info(
                "pki.ca_created",
                cluster=self._state.cluster,
                ca=spec.common_name,
                cert_hash=ca_cert_hash(cert),
            )
        return CertKey(cert, cert_pem, key)

    def ca_cert_hash(self) -> str:
        return ca_cert_hash(self.ca().cert)

    def service_account_keys(self) -> tuple[bytes, bytes]:
        """``(sa.key PEM, sa.pub PEM)``: the key pair that signs service-account tokens."""
        key_path, pub_path = self._file(SA_KEY), self._file(SA_PUB)
        key_pem, created = private_value(
            key_path,
            # ECDSA P-256 (ES256): accepted by the API server and controller manager, and
            # a fraction of an RSA key's size in the user data.
            lambda: _key_pem(ec.generate_private_key(ec.SECP256R1())),
        )
        key = _load_key(key_path, key_pem)
        pub_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not write_public(pub_path, pub_pem) and pub_path.read_bytes() != pub_pem:
            raise ConfigError(f"{pub_path} does not belong to the key {key_path}")
        if created:
            log.info("pki.service_account_key_created", cluster=self._state.cluster)
        return key_pem, pub_pem

    def control_plane_files(self) -> list[PkiFile]:
        """What every control-plane machine needs in /etc/kubernetes/pki before kubeadm runs:
        the shared CAs (certificate and key) and the service-account key pair. kubeadm then
        signs each machine's own certificates with them."""
        files: list[PkiFile] = []
        for spec in SHARED_CAS:
            ca = self.ca(spec)
            files.append(PkiFile(spec.cert, ca.cert_pem, private=False))
            files.append(PkiFile(spec.key, ca.key_pem(), private=True))
        sa_key, sa_pub = self.service_account_keys()
        files.append(PkiFile(SA_KEY, sa_key, private=True))
        files.append(PkiFile(SA_PUB, sa_pub, private=False))
        return files

    # -------------------------------------------------------------- API serving certificate

    def ensure_api_serving_cert(
        self, sans: ApiSans, *, now: dt.datetime | None = None
    ) -> tuple[CertKey, bool]:
        """The API serving certificate for ``sans``, signed by the cluster CA.

        Reused while it is signed by the current CA, has exactly these names, matches its key,
        and is more than :data:`RENEW_BEFORE` from expiry; otherwise re-issued with a new key.
        Returns ``(cert, issued)``."""
        now = now or dt.datetime.now(dt.UTC)
        ca = self.ca(now=now)
        cert_path, key_path = self._file("apiserver.crt"), self._file("apiserver.key")
        reason = self._serving_cert_problem(ca, sans, now, cert_path, key_path)
        if reason is None:
            cert_pem = cert_path.read_bytes()
            key_pem = read_private(key_path)
            assert key_pem is not None
            return CertKey(
                _load_cert(cert_path, cert_pem), cert_pem, _load_key(key_path, key_pem)
            ), False
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _serving_certificate(ca, key, sans, now)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        # Key first: a crash in between leaves a certificate that does not match its key,
        # which the next call detects and re-issues.
        replace_private(key_path, _key_pem(key))
        replace_public(cert_path, cert_pem)
        log.info(
            "pki.api_cert_issued",
            cluster=self._state.cluster,
            reason=reason,
            sans=list(sans.all),
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        return CertKey(cert, cert_pem, key), True

    def _serving_cert_problem(
        self,
        ca: CertKey,
        sans: ApiSans,
        now: dt.datetime,
        cert_path: Path,
        key_path: Path,
    ) -> str | None:
        if not cert_path.exists():
            return "missing"
        key_pem = read_private(key_path)
        if key_pem is None:
            return "key missing"
        cert = _load_cert(cert_path, cert_path.read_bytes())
        if not _same_key(cert, _load_key(key_path, key_pem)):
            return "key mismatch"
        try:
            cert.verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return "signed by another CA"
        if _san_set(cert) != set(sans.all):
            return "names changed"
        if cert.not_valid_after_utc - now < RENEW_BEFORE:
            return "expiring"
        return None


# -------------------------------------------------------------------- building certificates


def _load_key(path: Path, pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _load_cert(path: Path, pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a PEM certificate ({exc})") from None


def _ca_certificate(key: PrivateKey, common_name: str, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _serving_certificate(
    ca: CertKey, key: PrivateKey, sans: ApiSans, now: dt.datetime
) -> x509.Certificate:
    alt_names: list[x509.GeneralName] = [x509.DNSName(d) for d in sans.dns]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sans.ips]
    ca_public = ca.cert.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + SERVING_VALIDITY, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
