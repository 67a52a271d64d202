"""``healer lab``: the self-contained lab (docs/lab.md), interactive or one scenario."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

# The lab's own config, beside the package in a source checkout.
LAB_CONFIG = Path(__file__).resolve().parents[2] / "config" / "lab.yaml"


def cmd_lab(args: argparse.Namespace) -> int:
    from healer.lab.main import run_lab

    config_path = args.config or str(LAB_CONFIG)
    return asyncio.run(
        run_lab(
            config_path=Path(config_path),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            scenario=args.scenario,
            report=Path(args.report) if args.report else None,
            kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
            dry_run=args.dry_run,
            reset=args.reset,
        )
    )
