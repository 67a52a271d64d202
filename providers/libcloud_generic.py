"""The ``libcloud`` provider plugin: any libcloud compute driver, chosen by name in the config.

Options:

``driver`` (required)
    libcloud provider name: ``ec2``, ``gce``, ``healer_lab``, ... Only drivers with a row in the
    cloud registry (:mod:`providers.registry`: a tag dialect, and for some an infrastructure
    backend) are accepted, because healer identifies its machines by tags.
``args``
    Extra driver arguments: a mapping of keywords (``{region: eu-west-1, timeout: 30}``) or a list
    of positional arguments passed after the credentials. ``timeout`` (seconds per HTTP request)
    is understood by every libcloud driver and worth setting: a hung call holds a worker thread.
``host``, ``port``, ``secure``
    Passed to the driver (an API endpoint other than the cloud's own, e.g. a local emulator).
``image_owner``
    EC2 only: whose AMIs an image *name* is looked up among (default ``self``); ids always work.
``max_concurrency``
    Worker threads, hence concurrent cloud calls (default 4).

With ``ec2``, ``gce`` and ``healer_lab`` the plugin also builds networks, firewalls and load
balancers (the ``infra`` backend of the driver's registry row: :mod:`providers.ec2.infra_backend`,
:mod:`providers.gce.infra_backend`, :mod:`providers.lab.infra_backend`); see docs/provisioning.md.

Credentials: ``key`` and ``secret`` become the driver's first two positional arguments, as
libcloud expects; any other credential is passed by keyword (``token`` for EC2 session tokens).
For ``healer_lab`` the key defaults to ``<state_dir>/lab-cloud.sqlite``. Secrets are read once,
here, and scrubbed from every error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from healer.cloud.resources import Capabilities
from healer.config import SecretRef
from healer.errors import ConfigError, PermanentError
from providers import registry
from providers.driver_provider import DriverProvider

_DIALECT_OPTIONS = {"image_owner"}
_OPTIONS = {"driver", "args", "host", "port", "secure", "max_concurrency", *_DIALECT_OPTIONS}


class LibcloudProvider(DriverProvider):
    def __init__(
        self,
        *,
        cluster: str,
        options: Mapping[str, Any],
        credentials: Mapping[str, SecretRef],
        state_dir: Path,
    ) -> None:
        where = "provider 'libcloud'"
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_OPTIONS))}"
            )
        driver_name = options.get("driver")
        if not isinstance(driver_name, str) or not driver_name:
            raise ConfigError(
                f"{where}: option 'driver' is required: a libcloud provider name such as "
                f"{', '.join(registry.names())}"
            )
        try:
            driver_cls = registry.libcloud_driver(driver_name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        cloud = registry.get(driver_name) or registry.by_driver_class(driver_cls)
        if cloud is None:
            raise PermanentError(
                f"{where}: driver {driver_name} cannot tag machines (healer knows how to tag on "
                f"{', '.join(registry.names())} and EC2-compatible drivers); without tags "
                "healer cannot tell its machines from others', so it refuses to manage them"
            )
        dialect_cls = cloud.load_dialect()
        foreign = sorted(set(options) & _DIALECT_OPTIONS - dialect_cls.options)
        if foreign:
            raise ConfigError(
                f"{where}: option {', '.join(map(repr, foreign))} does not apply to driver "
                f"{driver_name}"
            )
        dialect = dialect_cls.from_options(options)

        positional, keywords = _driver_args(where, options.get("args"))
        for opt in ("host", "port", "secure"):
            if opt in options:
                keywords[opt] = options[opt]

        revealed = {name: ref.reveal() for name, ref in credentials.items()}
        key = revealed.pop("key", None) or dialect.default_key(Path(state_dir))
        if key is None:
            raise ConfigError(f"{where}: driver {driver_name} needs provider.credentials.key")
        secret = revealed.pop("secret", None)
        lead = [key] if secret is None else [key, secret]
        clash = sorted(set(revealed) & set(keywords))
        if clash:
            raise ConfigError(f"{where}: {', '.join(clash)} given both as credential and option")
        keywords.update(revealed)
        args = [*lead, *positional]

        workers = options.get("max_concurrency", 4)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"{where}: option max_concurrency must be an integer >= 1")

        self.driver_name = driver_name
        super().__init__(
            name=f"libcloud/{driver_name}",
            cluster=cluster,
            make_driver=lambda: driver_cls(*args, **keywords),
            dialect=dialect,
            max_workers=workers,
            secrets=[v for v in (key, secret, *revealed.values()) if isinstance(v, str)],
        )
        # Networks, firewalls and load balancers, for the drivers healer has them for.
        infra = (
            cloud.make_infra(key, secret, keywords) if cloud.name == driver_name.lower() else None
        )
        if infra is not None:
            self.use_infra(infra)

    @classmethod
    def capabilities_for(cls, options: Mapping[str, Any]) -> Capabilities:
        """What the plugin builds with ``options``, known without credentials or a call."""
        return registry.plugin_capabilities(options)


def _driver_args(where: str, raw: Any) -> tuple[list[Any], dict[str, Any]]:
    if raw is None:
        return [], {}
    if isinstance(raw, Mapping):
        return [], {str(k): v for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return list(raw), {}
    raise ConfigError(f"{where}: option 'args' must be a mapping of keywords or a list")
