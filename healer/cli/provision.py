"""``healer plan``, ``healer apply`` and ``healer destroy``: where the config and the state are;
the work is :mod:`healer.provisioning.commands`."""

from __future__ import annotations

import argparse
from pathlib import Path

from healer.cli.common import config_path, state_dir_for
from healer.config import HealerConfig, load_config
from healer.errors import ConfigError


def cmd_plan(args: argparse.Namespace) -> int:
    from healer.provisioning.commands import run_plan

    path = config_path(args)
    return run_plan(args, config_path=path, state_dir=_provisioning_state_dir(args, path))


def cmd_apply(args: argparse.Namespace) -> int:
    from healer.jobs.rollout import run_rolls
    from healer.provisioning.commands import run_apply

    path = config_path(args)
    state_dir = _provisioning_state_dir(args, path)
    # A roll that was stopped first finishes its replacements in flight, then the plan; then
    # the machines whose pool's spec changed, through the remediation workflow.
    code = run_rolls(args, config_path=path, state_dir=state_dir, resume_only=True)
    if code == 0:
        code = run_apply(args, config_path=path, state_dir=state_dir)
    if code == 0:
        code = run_rolls(args, config_path=path, state_dir=state_dir)
    return code


def cmd_destroy(args: argparse.Namespace) -> int:
    from healer.provisioning.commands import run_destroy

    path = config_path(args)
    return run_destroy(args, config_path=path, state_dir=_provisioning_state_dir(args, path))


def _provisioning_state_dir(args: argparse.Namespace, path: str) -> Path:
    # The config's stateDir counts too; a config error surfaces in the command itself.
    try:
        config: HealerConfig | None = load_config(path)
    except ConfigError:
        config = None
    return state_dir_for(args, config)
