"""``healer rotate encryption-key|ca``: where the config and the state are; the work is
:mod:`healer.jobs.rotate`."""

from __future__ import annotations

import argparse

from healer.cli.common import config_path
from healer.cli.provision import _provisioning_state_dir


def cmd_rotate(args: argparse.Namespace) -> int:
    from healer.jobs.rotate import run_rotate

    path = config_path(args)
    return run_rotate(args, config_path=path, state_dir=_provisioning_state_dir(args, path))
