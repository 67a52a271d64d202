"""Building blocks of the configuration: durations, limits, CIDRs, listen addresses, secret
references (``{env: NAME}``, ``{file: PATH}``, ``{credential: NAME}``; read only when used,
never shown in ``repr`` or logs), and the base model every section derives from.

Every number is bounded here, once: a duration is finite and at most :data:`MAX_DURATION`, any
other number finite and at most :data:`MAX_NUMBER` in size (fields add tighter bounds of their
own). ``rebootTimeout: 1000...000`` (a 400-digit integer no float holds), ``1.0e+400`` or
``.nan`` is refused with the field's name, like any other bad value, never left to overflow
later in a timer, a socket option or SQLite.
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
    field_validator,
    model_validator,
)

from healer.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# No timer of healer is meant to run longer than a year; a longer one is a typo.
MAX_DURATION = 365 * 86400.0
# Any other number: it fits the signed 32-bit integers of the C APIs numbers end up in.
MAX_NUMBER = 2**31 - 1


def parse_duration(value: Any) -> float:
    """``"5m"`` -> 300.0; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '1h'")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise ValueError(
                f"invalid duration {_shown(value)}: use seconds or a string like '30s', '5m', '1h'"
            )
    except OverflowError:  # an integer too large for a float
        seconds = math.inf if value > 0 else -math.inf
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"invalid duration {_shown(value)}: must be a non-negative time")
    if seconds > MAX_DURATION:
        raise ValueError(f"invalid duration {_shown(value)}: at most 365d ({MAX_DURATION:.0f}s)")
    return seconds


def _shown(value: Any, limit: int = 40) -> str:
    """``value`` as an error message shows it: a 400-digit number is cut short (and one of
    thousands of digits, which Python will not even turn into text, only described)."""
    if isinstance(value, int) and value.bit_length() > 1000:
        return f"a number of about {int(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigModel(BaseModel):
    """Every config section: unknown keys are errors, camelCase aliases, immutable, numbers
    bounded (no inf or nan; no integer beyond :data:`MAX_NUMBER`)."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_NUMBER:
            raise ValueError(f"{_shown(value)} is out of range (at most {MAX_NUMBER})")
        return value


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
            if not 0 <= value <= MAX_NUMBER:
                raise ValueError(f"a count must be from 0 to {MAX_NUMBER}, not {_shown(value)}")
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
                return cls.parse(int(text))
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
