"""The shipped provisioning examples (config/provision-*.yaml), as the CLI reads them but with
the provider pointed at a local fake of the cloud (moto, tests/gce_fake.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def example(name: str) -> dict[str, Any]:
    """The one cluster of ``config/<name>``, as a document."""
    (cluster,) = yaml.safe_load((CONFIG_DIR / name).read_text())["clusters"]
    return dict(cluster)


def pointed_at(
    name: str, tmp_path: Path, *, options: Mapping[str, Any], secrets: Mapping[str, str]
) -> list[str]:
    """Write ``config/<name>`` to ``tmp_path`` with its provider's ``options`` replaced and its
    credentials (``secrets``: name -> value) in files; the CLI arguments that use it."""
    doc = yaml.safe_load((CONFIG_DIR / name).read_text())
    credentials = {}
    for key, value in secrets.items():
        (tmp_path / f"secret-{key}").write_text(value)
        credentials[key] = {"file": str(tmp_path / f"secret-{key}")}
    (cluster,) = doc["clusters"]
    cluster["provider"] = {
        "plugin": "libcloud",
        "options": dict(options),
        "credentials": credentials,
    }
    config = tmp_path / "healer.yaml"
    config.write_text(yaml.safe_dump(doc))
    return ["-c", str(config), "--state-dir", str(tmp_path / "state")]
