"""Building blocks of the configuration: durations, limits, CIDRs, listen addresses, secret
references (``{env: NAME}``, ``{file: PATH}``, ``{credential: NAME}``; read only when used,
never shown in ``repr`` or logs), and the base model every section derives from.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from healer.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"5m"`` -> 300.0; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use seconds or a string like '30s', '5m', '1h'"
        )
    if seconds < 0 or math.isinf(seconds) or math.isnan(seconds):
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigModel(BaseModel):
    """Every config section: unknown keys are errors, camelCase aliases, immutable."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SecretRef(ConfigModel):
    """A secret given by reference. Exactly one of ``env``, ``file`` or ``credential``.

    ``{credential: NAME}`` reads ``$CREDENTIALS_DIRECTORY/NAME``: the file systemd provides for
    ``LoadCredential=NAME:/path`` (see systemd/healer.service and docs/install.md), readable only
    by the service and never in its environment.
    """

    env: str | None = None
    file: Path | None = None
    credential: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]{1,255}$")

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        given = [name for name in ("env", "file", "credential") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "a secret reference needs exactly one of 'env', 'file' or 'credential'"
            )
        return self

    def reveal(self) -> str:
        if self.credential is not None:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"secret: credential {self.credential}: $CREDENTIALS_DIRECTORY is not set "
                    f"(start healer from its systemd unit with LoadCredential={self.credential}:"
                    "PATH, or use 'file' or 'env' outside systemd)"
                )
            path = Path(directory) / self.credential
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"secret: credential {self.credential}: cannot read {path}: {exc.strerror} "
                    f"(is there a LoadCredential={self.credential}:... line in the unit?)"
                ) from exc
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"secret: environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret: cannot read {self.file}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        if self.credential is not None:
            return f"SecretRef(credential:{self.credential})"
        where = f"env:{self.env}" if self.env else f"file:{self.file}"
        return f"SecretRef({where})"


class Threshold(ConfigModel):
    """A limit given as a count (``2``) or a percentage of the scope (``"40%"``)."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Threshold:
        if isinstance(value, Threshold):
            return value
        if isinstance(value, bool):
            raise ValueError("expected a count like 2 or a percentage like '40%'")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a count must be >= 0")
            return cls(count=value)
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("%"):
                try:
                    pct = float(text[:-1])
                except ValueError:
                    pass
                else:
                    if 0 <= pct <= 100:
                        return cls(percent=pct)
                raise ValueError(f"invalid percentage {value!r}: use a value from '0%' to '100%'")
            if text.isdigit():
                return cls(count=int(text))
        raise ValueError(f"invalid limit {value!r}: use a count like 2 or a percentage like '40%'")

    def limit_for(self, total: int) -> int:
        """The allowed number for a scope of ``total`` (percentages round down, as Cluster API)."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return math.floor(total * self.percent / 100.0 + 1e-9)

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


ThresholdField = Annotated[Threshold, BeforeValidator(Threshold.parse)]


def _cidr(value: Any) -> str:
    """An IPv4 or IPv6 network in CIDR notation, without host bits (``10.0.0.0/16``)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string like '10.0.0.0/16', got {value!r}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {value!r}: {exc}") from None


Cidr = Annotated[str, BeforeValidator(_cidr)]


def _parse_listen(value: Any) -> Any:
    """``"0.0.0.0:9095"`` or ``"[::1]:9095"`` -> ``("0.0.0.0", 9095)``."""
    if not isinstance(value, str):
        return value
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid listen address {value!r}: use 'HOST:PORT', e.g. '0.0.0.0:9095'")
    return (host.removeprefix("[").removesuffix("]"), int(port))


ListenAddress = Annotated[tuple[str, int], BeforeValidator(_parse_listen)]
