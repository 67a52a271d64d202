"""The cluster's private CA and API serving certificate: generated once, kept, checked, re-issued
only when needed. Cross-checked with the real openssl."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from healer.errors import ConfigError
from healer.provisioning.keystore import ClusterState
from healer.provisioning.pki import (
    CLUSTER_CA,
    ETCD_CA,
    ApiSans,
    ClusterPki,
    api_server_sans,
)
from tests.provisioning_support import require_program

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path: Path) -> ClusterPki:
    return ClusterPki(ClusterState(tmp_path, "prod"))


def test_ca_is_created_once_with_private_key_0600(pki: ClusterPki) -> None:
    ca = pki.ca()
    directory = pki.directory
    assert _mode(directory / "ca.key") == 0o600
    assert _mode(directory / "ca.crt") == 0o644
    assert _mode(directory) == 0o700
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    assert ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes"
    again = pki.ca()
    assert again.cert_pem == ca.cert_pem and again.key_pem() == ca.key_pem()
    assert "PRIVATE" not in repr(ca)


def test_control_plane_files_are_what_kubeadm_expects(pki: ClusterPki) -> None:
    files = {f.path: f for f in pki.control_plane_files()}
    assert set(files) == {
        "ca.crt",
        "ca.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "etcd/ca.crt",
        "etcd/ca.key",
        "sa.key",
        "sa.pub",
    }
    assert {p for p, f in files.items() if f.private} == {
        "ca.key",
        "front-proxy-ca.key",
        "etcd/ca.key",
        "sa.key",
    }
    assert _mode(pki.directory / "etcd" / "ca.key") == 0o600
    assert _mode(pki.directory / "sa.key") == 0o600
    etcd = x509.load_pem_x509_certificate(files["etcd/ca.crt"].content)
    assert etcd.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "etcd-ca"
    # The three CAs are distinct, and the same files come back on the next call.
    assert len({files[p].content for p in ("ca.crt", "front-proxy-ca.crt", "etcd/ca.crt")}) == 3
    assert [f.content for f in pki.control_plane_files()] == [f.content for f in files.values()]


def test_a_certificate_without_its_key_is_an_error_not_a_new_ca(pki: ClusterPki) -> None:
    pki.ca(ETCD_CA)
    (pki.directory / "etcd" / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"etcd/ca.crt exists but its key .* is missing"):
        pki.ca(ETCD_CA)


def test_a_key_that_does_not_match_the_certificate_is_an_error(tmp_path: Path) -> None:
    one = ClusterPki(ClusterState(tmp_path / "a", "prod"))
    two = ClusterPki(ClusterState(tmp_path / "b", "prod"))
    one.ca()
    two.ca()
    shutil.copy(two.directory / "ca.crt", one.directory / "ca.crt")
    with pytest.raises(ConfigError, match="does not belong to the key"):
        one.ca()


def test_ca_cert_hash_matches_the_openssl_recipe_in_the_kubeadm_docs(pki: ClusterPki) -> None:
    require_program(OPENSSL, "openssl")
    pki.ca()
    crt = pki.directory / CLUSTER_CA.cert
    pubkey = subprocess.run(
        [OPENSSL, "x509", "-pubkey", "-in", str(crt), "-noout"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    der = subprocess.run(
        [OPENSSL, "pkey", "-pubin", "-outform", "der"],
        input=pubkey,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    digest = subprocess.run(
        [OPENSSL, "dgst", "-sha256", "-hex"], input=der, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    assert pki.ca_cert_hash() == "sha256:" + digest.split()[-1]


@pytest.mark.parametrize(
    ("kwargs", "dns_extra", "ips"),
    [
        (
            {"endpoint_host": "10.0.0.10", "control_plane_ips": ["10.0.1.4", "10.0.1.5"]},
            [],
            ["10.96.0.1", "10.0.0.10", "10.0.1.4", "10.0.1.5"],
        ),
        (
            {
                "endpoint_host": "API.Example.com.",
                "service_subnet": "10.100.0.0/16",
                "extra": ["203.0.113.7", "10.0.1.4"],
                "control_plane_ips": ["10.0.1.4"],
            },
            ["api.example.com"],
            ["10.100.0.1", "10.0.1.4", "203.0.113.7"],
        ),
        (
            {"endpoint_host": "fd00::10", "service_subnet": "fd00:96::/112"},
            [],
            ["fd00:96::1", "fd00::10"],
        ),
    ],
)
def test_api_server_sans(kwargs: dict, dns_extra: list[str], ips: list[str]) -> None:  # type: ignore[type-arg]
    sans = api_server_sans(dns_domain="cluster.local", **kwargs)
    assert sans.dns == (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        *dns_extra,
    )
    assert sans.ips == tuple(ips)


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*ext.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def test_api_serving_cert_signed_by_the_ca_with_the_load_balancer_in_its_names(
    pki: ClusterPki,
) -> None:
    require_program(OPENSSL, "openssl")
    sans = api_server_sans(
        endpoint_host="api.prod.example.com",
        control_plane_ips=["10.0.1.4", "10.0.1.5", "10.0.1.6"],
        extra=["198.51.100.20"],
    )
    cert, issued = pki.ensure_api_serving_cert(sans)
    assert issued
    assert _sans(cert.cert) == set(sans.all)
    assert {"api.prod.example.com", "198.51.100.20", "10.0.1.5", "kubernetes.default.svc"} <= _sans(
        cert.cert
    )
    eku = cert.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _mode(pki.directory / "apiserver.key") == 0o600
    # The real openssl agrees: the chain verifies and the certificate is valid for the LB name.
    result = subprocess.run(
        [
            OPENSSL,
            "verify",
            "-CAfile",
            str(pki.directory / "ca.crt"),
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "api.prod.example.com",
            str(pki.directory / "apiserver.crt"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_cert_is_reused_until_names_ca_or_expiry_change(pki: ClusterPki) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    sans = api_server_sans(endpoint_host="10.0.0.10", control_plane_ips=["10.0.1.4"])
    first, issued = pki.ensure_api_serving_cert(sans, now=now)
    assert issued
    same, issued = pki.ensure_api_serving_cert(sans, now=now + dt.timedelta(days=100))
    assert not issued and same.cert_pem == first.cert_pem

    # A control-plane machine was replaced: its new address must be in the certificate.
    moved = api_server_sans(endpoint_host="10.0.0.10", control_plane_ips=["10.0.1.9"])
    second, issued = pki.ensure_api_serving_cert(moved, now=now + dt.timedelta(days=100))
    assert issued and "10.0.1.9" in _sans(second.cert) and "10.0.1.4" not in _sans(second.cert)

    # Within 30 days of expiry it is renewed.
    late = now + dt.timedelta(days=100 + 340)
    third, issued = pki.ensure_api_serving_cert(moved, now=late)
    assert issued and third.cert.not_valid_after_utc > second.cert.not_valid_after_utc


def test_serving_cert_from_another_ca_is_reissued(tmp_path: Path) -> None:
    state = ClusterState(tmp_path, "prod")
    pki = ClusterPki(state)
    sans = ApiSans(dns=("kubernetes",), ips=("10.96.0.1",))
    pki.ensure_api_serving_cert(sans)
    for name in ("ca.crt", "ca.key"):
        (pki.directory / name).unlink()
    new_ca = pki.ca()
    cert, issued = pki.ensure_api_serving_cert(sans)
    assert issued
    cert.cert.verify_directly_issued_by(new_ca.cert)
