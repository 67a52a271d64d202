"""``healer lab``: the self-contained lab (docs/lab.md), interactive or one scenario."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from healer.share import shared

# The lab's own config: package data (healer/share/config/lab.yaml), so a wheel has it too.
LAB_CONFIG = shared("config", "lab.yaml")


def cmd_lab(args: argparse.Namespace) -> int:
    from healer.lab.main import run_lab
    from healer.lab.node_monitor import given as given_node_monitor

    config_path = args.config or str(LAB_CONFIG)
    return asyncio.run(
        run_lab(
            config_path=Path(config_path),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            scenario=args.scenario,
            report=Path(args.report) if args.report else None,
            kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
            node_monitor=given_node_monitor(args.node_grace, args.node_monitor_period),
            dry_run=args.dry_run,
            reset=args.reset,
        )
    )
