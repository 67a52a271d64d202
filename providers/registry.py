"""The cloud registry: every libcloud driver healer can manage, by name, as lazy references.

One row per driver name, as libcloud's own ``DRIVERS`` table does it: the driver's tag
:class:`~providers.dialects.Dialect`, its infrastructure backend (networks, firewalls, load
balancers) and its static :class:`~healer.cloud.resources.Capabilities`, each a
``"module:attribute"`` string resolved with :mod:`importlib` only when that driver is asked for.
So naming ``ec2`` in a config never imports the GCE code, and nothing imports the lab cloud unless
a config names ``healer_lab``: the lab registers itself here by name like any other driver, and
its libcloud driver class (``driver``) is handed to libcloud's ``set_driver`` on first use.

A driver not listed by name is recognised by its class (``driver_classes``, the names of libcloud
base classes), so EC2-compatible drivers registered under other names find the EC2 row.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from healer.cloud.resources import Capabilities, no_infra
from healer.errors import ConfigError

if TYPE_CHECKING:
    from libcloud.compute.base import NodeDriver

    from providers.dialects import Dialect
    from providers.reconciler import InfraBackend

__all__ = [
    "Cloud",
    "by_driver_class",
    "capabilities_for",
    "get",
    "libcloud_driver",
    "names",
    "plugin_capabilities",
    "register",
    "resolve",
]


@dataclass(frozen=True)
class Cloud:
    """One driver's row. Every reference is ``"module:attribute"``."""

    name: str  # the libcloud provider name, as a config's ``driver`` option gives it
    dialect: str  # a Dialect subclass
    capabilities: str  # a Capabilities constant
    # A function (key, secret, driver keywords) -> InfraBackend; None: no infrastructure.
    infra: str | None = None
    driver: str | None = None  # a NodeDriver class healer brings (not one of libcloud's own)
    driver_classes: tuple[str, ...] = ()  # libcloud class names that mean this cloud

    def load_dialect(self) -> type[Dialect]:
        dialect: type[Dialect] = resolve(self.dialect)
        return dialect

    def load_capabilities(self) -> Capabilities:
        caps: Capabilities = resolve(self.capabilities)
        return caps

    def make_infra(
        self, key: str, secret: str | None, keywords: Mapping[str, Any]
    ) -> InfraBackend | None:
        if self.infra is None:
            return None
        backend: InfraBackend = resolve(self.infra)(key, secret, keywords)
        return backend


_CLOUDS: dict[str, Cloud] = {}


def register(cloud: Cloud) -> None:
    """Add or replace the row of ``cloud.name`` (names are case-insensitive)."""
    _CLOUDS[cloud.name.lower()] = cloud


def _register_builtins() -> None:
    # The clouds of this repository. Each package follows one layout: ``CAPABILITIES`` in its
    # ``__init__``, its dialect class in ``dialect.py``, ``make_backend`` in ``infra_backend.py``.
    for name, package, dialect, classes, driver in (
        ("ec2", "providers.ec2", "Ec2Dialect", ("BaseEC2NodeDriver",), None),
        ("gce", "providers.gce", "GceDialect", ("GCENodeDriver",), None),
        ("healer_lab", "providers.lab", "LabDialect", ("LabNodeDriver",), "driver:LabNodeDriver"),
    ):
        register(
            Cloud(
                name=name,
                dialect=f"{package}.dialect:{dialect}",
                capabilities=f"{package}:CAPABILITIES",
                infra=f"{package}.infra_backend:make_backend",
                driver=f"{package}.{driver}" if driver else None,
                driver_classes=classes,
            )
        )


_register_builtins()


def resolve(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names, imported now."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def names() -> list[str]:
    """The registered driver names, sorted."""
    return sorted(_CLOUDS)


def get(name: str) -> Cloud | None:
    return _CLOUDS.get(name.lower())


def by_driver_class(driver_cls: type) -> Cloud | None:
    """The row whose ``driver_classes`` names ``driver_cls`` or one of its bases."""
    for klass in driver_cls.__mro__:
        for cloud in _CLOUDS.values():
            if klass.__name__ in cloud.driver_classes:
                return cloud
    return None


def libcloud_driver(name: str) -> type[NodeDriver]:
    """libcloud's driver class for ``name``, registering healer's own driver first if the row
    brings one. ``ConfigError`` when libcloud has no such driver."""
    from libcloud.compute.providers import DRIVERS, get_driver, set_driver

    cloud = get(name)
    if cloud is not None and cloud.driver is not None and name not in DRIVERS:
        module, _, klass = cloud.driver.partition(":")
        # libcloud's type comments say module and class objects; it actually wants their names.
        set_driver(name, module, klass)  # type: ignore[arg-type]
    try:
        driver_cls: type[NodeDriver] = get_driver(name)
    except AttributeError as exc:
        raise ConfigError(f"libcloud has no compute driver {name!r}") from exc
    return driver_cls


def plugin_capabilities(options: Mapping[str, Any]) -> Capabilities:
    """The ``libcloud`` plugin's capabilities with its config ``options`` (``driver`` names the
    row): its ``healer.capabilities`` entry point (pyproject.toml), so ``healer validate`` reads
    them without importing libcloud."""
    return capabilities_for(str(options.get("driver", "")).lower())


def capabilities_for(driver: str) -> Capabilities:
    """What healer builds on libcloud driver ``driver``, without building it."""
    cloud = get(driver)
    if cloud is not None and cloud.infra is not None:
        return cloud.load_capabilities()
    built = ", ".join(n for n in names() if _CLOUDS[n].infra is not None)
    return no_infra(
        f"libcloud/{driver or '?'}",
        f"healer has no network, firewall or load balancer support for libcloud driver "
        f"{driver or '(none)'} (it has for {built})",
    )
