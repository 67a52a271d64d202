"""The files healer needs at run time beside its code, shipped in the wheel as package data and
found through :mod:`importlib.resources`: the example and lab configurations (``config/``), the
systemd units of the daemon and of the node agent (``systemd/``) and the Grafana dashboard
(``dashboards/``).

They live here, once: the checkout's top-level ``config/``, ``systemd/`` and
``docs/grafana-dashboard.json`` are symbolic links to these (tests/test_cli_package.py keeps it
so), so a source checkout and an installed wheel read the same bytes.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shared(*parts: str) -> Path:
    """The path of a shipped file or directory, e.g. ``shared("config", "lab.yaml")``.

    healer is installed as plain files (a wheel, or a checkout), never run from a zip archive:
    the units are read as a directory tree, so a real path is what the callers need.
    """
    root = files(__name__)
    if not isinstance(root, Path):  # a zipimport or other loader: not how healer is installed
        raise RuntimeError(f"healer's package data is not on the file system ({root!r})")
    return root.joinpath(*parts)
