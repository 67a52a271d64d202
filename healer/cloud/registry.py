"""The plugin registry: cloud provider plugins found by name in the ``healer.providers``
entry-point group.

The daemon sees a plugin only through :func:`load_provider` and the
:class:`~healer.cloud.machines.Provider` protocol. Plugins are loaded lazily by their entry point
(``name = module:Class``), so naming one never imports the others, nor libcloud until a plugin
needs it; healer itself never imports the ``providers`` package.

What a plugin can build is declared apart from it, in the ``healer.capabilities`` group
(``name = module:function``, the function taking the cluster's provider options): ``healer
validate`` and ``plan`` read it there without importing the plugin, hence without its cloud
library. A plugin that declares nothing there is asked through its class (``capabilities_for``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from healer.cloud.machines import Provider
from healer.cloud.resources import Capabilities, no_infra
from healer.errors import ConfigError

__all__ = [
    "CAPABILITIES_GROUP",
    "ENTRY_POINT_GROUP",
    "available_plugins",
    "capabilities_for",
    "load_provider",
]

ENTRY_POINT_GROUP = "healer.providers"
CAPABILITIES_GROUP = "healer.capabilities"


@functools.cache
def _entry_points(group: str = ENTRY_POINT_GROUP) -> Mapping[str, EntryPoint]:
    """The group's entry points by name, scanned once per process (a scan reads every installed
    distribution's metadata; ``validate`` of a 100-cluster file asked 400 times). A plugin
    installed later is seen by the next process: the daemon's restart, not its reload."""
    return {ep.name: ep for ep in entry_points(group=group)}


def available_plugins() -> list[str]:
    """Names of the installed provider plugins, sorted."""
    return sorted(_entry_points())


def _factory(plugin: str) -> Any:
    found = _entry_points().get(plugin)
    if found is None:
        names = ", ".join(available_plugins()) or "(none installed)"
        raise ConfigError(
            f"unknown provider plugin {plugin!r}; available plugins: {names} "
            f"(entry-point group '{ENTRY_POINT_GROUP}')"
        )
    try:
        return found.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"provider plugin {plugin!r} ({found.value}) cannot be loaded: {exc}"
        ) from exc


def capabilities_for(plugin: str, options: Mapping[str, Any]) -> Capabilities:
    """What ``plugin`` (with its config ``options``) can build, without building it or calling
    the cloud: for ``healer validate`` and ``healer plan``.

    A plugin says so with a function in the ``healer.capabilities`` group (read without importing
    the plugin) or else with a ``capabilities_for(options)`` class method; one with neither, or
    one not installed, builds no infrastructure.
    """
    declared = _entry_points(CAPABILITIES_GROUP).get(plugin)
    if declared is not None and plugin in _entry_points():
        try:
            lookup = declared.load()
        except (ImportError, AttributeError) as exc:
            return no_infra(plugin, f"capabilities of plugin {plugin!r} ({declared.value}): {exc}")
        caps: Capabilities = lookup(options)
        return caps
    try:
        factory = _factory(plugin)
    except ConfigError as exc:
        return no_infra(plugin, str(exc))
    static = getattr(factory, "capabilities_for", None)
    if static is None:
        return no_infra(plugin, f"provider plugin {plugin!r} has no infrastructure support")
    found: Capabilities = static(options)
    return found


def load_provider(plugin: str, **kwargs: Any) -> Provider:
    """Build the plugin registered as ``plugin`` with the factory keywords.

    ``kwargs`` are those of :class:`~healer.cloud.machines.ProviderFactory`: ``cluster``, ``options``,
    ``credentials`` and ``state_dir``.
    """
    provider: Provider = _factory(plugin)(**kwargs)
    return provider
