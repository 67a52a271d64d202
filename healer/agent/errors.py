"""The agent's errors: each is reported in one line, and the command exits for it (or, in
``run``, retries)."""

from __future__ import annotations


class AgentError(Exception):
    """A problem the agent reports in one line and exits for (or retries, in ``run``)."""


class ConfigError(AgentError):
    pass


class MqttError(AgentError):
    pass
