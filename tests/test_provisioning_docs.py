"""The examples in docs/configuration.md and docs/security.md are valid config, and the one
for a whole cluster renders user data that cloud-init accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from healer.config import PodSecurityConfig, RbacConfig, parse_config
from healer.provisioning.userdata import UserDataBuilder
from tests.provisioning_support import cloud_init_schema

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _yaml_blocks(text: str) -> list[Any]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_configuration_example_parses_and_renders(tmp_path: Path) -> None:
    text = (DOCS / "configuration.md").read_text()
    section = text.split("## Machine hardening and cluster security", 1)[1]
    (doc,) = _yaml_blocks(section)[:1]
    entry = doc["clusters"][0]
    entry |= {
        "provider": {"plugin": "lab"},
        "pools": [{"name": "cp", "role": "control-plane", "size": 3}],
    }
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    entry["ssh"]["publicKey"] = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    ca = tmp_path / "broker-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    password = tmp_path / "pw"
    password.write_text("secret\n")
    entry["agent"] |= {"tlsCa": str(ca), "password": {"file": str(password)}}
    entry["kubernetes"]["controlPlaneEndpoint"] = "api.prod.example.com"
    cluster = parse_config(doc).clusters[0]
    text = UserDataBuilder(tmp_path, discover_agent=False)(cluster, "cp", "prod-cp-1")
    cloud_init_schema(text, tmp_path, "docs-example")


def test_security_examples_parse() -> None:
    blocks = _yaml_blocks((DOCS / "security.md").read_text())
    by_key = {next(iter(b)): b[next(iter(b))] for b in blocks if isinstance(b, dict)}
    RbacConfig.model_validate(by_key["rbac"])
    PodSecurityConfig.model_validate(by_key["podSecurity"])
