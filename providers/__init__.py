"""Cloud provider plugins, found by name in the ``healer.providers`` entry-point group.

This package is the only code in healer that imports libcloud. The daemon sees it through
:func:`load_provider` and the :class:`~providers.base.Provider` protocol; plugins themselves are
loaded lazily, so naming one never imports the others (or libcloud, until a plugin needs it).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from healer.errors import ConfigError
from providers.base import Machine, MachineRequest, MachineState, Provider, tags_match

__all__ = [
    "ENTRY_POINT_GROUP",
    "Machine",
    "MachineRequest",
    "MachineState",
    "Provider",
    "available_plugins",
    "load_provider",
    "tags_match",
]

ENTRY_POINT_GROUP = "healer.providers"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_plugins() -> list[str]:
    """Names of the installed provider plugins, sorted."""
    return sorted(_entry_points())


def load_provider(plugin: str, **kwargs: Any) -> Provider:
    """Build the plugin registered as ``plugin`` with the factory keywords.

    ``kwargs`` are those of :class:`~providers.base.ProviderFactory`: ``cluster``, ``options``,
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
