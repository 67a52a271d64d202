"""The lab cloud: a SQLite-backed libcloud driver (:mod:`~providers.lab.driver`), its dialect
and infrastructure backend, and the ``lab`` provider plugin over them (:mod:`~providers.lab.plugin`).

Importing this package has no side effect. The lab registers itself in :mod:`providers.registry`
by name (``healer_lab``) like any other driver; the registry hands the driver class to libcloud
the first time a config names it, so ``get_driver("healer_lab")`` works after
``providers.registry.libcloud_driver("healer_lab")``. Only the lab's own code and the tests import
this package; production code reaches it by name through the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from healer.cloud.resources import Capabilities

__all__ = ["CAPABILITIES", "capabilities_for"]

CAPABILITIES = Capabilities.builds_all(
    "lab",
    subnet_location_required=False,
    notes=("the lab cloud records networks, firewalls and load balancers; nothing is enforced",),
)


def capabilities_for(options: Mapping[str, Any]) -> Capabilities:
    """The ``lab`` plugin's capabilities, whatever its options: its ``healer.capabilities`` entry
    point (pyproject.toml), read by ``healer validate`` without importing the driver."""
    return CAPABILITIES
