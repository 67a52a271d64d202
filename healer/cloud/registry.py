"""The plugin registry: cloud provider plugins found by name in the ``healer.providers``
entry-point group.

The daemon sees a plugin only through :func:`load_provider` and the
:class:`~healer.cloud.machines.Provider` protocol. Plugins are loaded lazily by their entry point
(``name = module:Class``), so naming one never imports the others, nor libcloud until a plugin
needs it; healer itself never imports the ``providers`` package.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from healer.cloud.machines import Provider
from healer.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "available_plugins", "load_provider"]

ENTRY_POINT_GROUP = "healer.providers"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_plugins() -> list[str]:
    """Names of the installed provider plugins, sorted."""
    return sorted(_entry_points())


def load_provider(plugin: str, **kwargs: Any) -> Provider:
    """Build the plugin registered as ``plugin`` with the factory keywords.

    ``kwargs`` are those of :class:`~healer.cloud.machines.ProviderFactory`: ``cluster``, ``options``,
    ``credentials`` and ``state_dir``.
    """
    found = _entry_points().get(plugin)
    if found is None:
        names = ", ".join(available_plugins()) or "(none installed)"
        raise ConfigError(
            f"unknown provider plugin {plugin!r}; available plugins: {names} "
            f"(entry-point group '{ENTRY_POINT_GROUP}')"
        )
    try:
        factory = found.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"provider plugin {plugin!r} ({found.value}) cannot be loaded: {exc}"
        ) from exc
    provider: Provider = factory(**kwargs)
    return provider
