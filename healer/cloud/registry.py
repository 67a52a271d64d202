"""The plugin registry: cloud provider plugins found by name in the ``healer.providers``
entry-point group.

The daemon sees a plugin only through :func:`load_provider` and the
:class:`~healer.cloud.machines.Provider` protocol. Plugins are loaded lazily by their entry point
(``name = module:Class``), so naming one never imports the others, nor libcloud until a plugin
needs it; healer itself never imports the ``providers`` package.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from healer.cloud.machines import Provider
from healer.cloud.resources import Capabilities, no_infra
from healer.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "available_plugins", "capabilities_for", "load_provider"]

ENTRY_POINT_GROUP = "healer.providers"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


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

    A plugin says so with a ``capabilities_for(options)`` class method; one without it, or one
    not installed, builds no infrastructure.
    """
    try:
        factory = _factory(plugin)
    except ConfigError as exc:
        return no_infra(plugin, str(exc))
    static = getattr(factory, "capabilities_for", None)
    if static is None:
        return no_infra(plugin, f"provider plugin {plugin!r} has no infrastructure support")
    caps: Capabilities = static(options)
    return caps


def load_provider(plugin: str, **kwargs: Any) -> Provider:
    """Build the plugin registered as ``plugin`` with the factory keywords.

    ``kwargs`` are those of :class:`~healer.cloud.machines.ProviderFactory`: ``cluster``, ``options``,
    ``credentials`` and ``state_dir``.
    """
    provider: Provider = _factory(plugin)(**kwargs)
    return provider
