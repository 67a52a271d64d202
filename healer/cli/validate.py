"""``healer validate``: the config file, the plugins it names, what ``apply`` would need from each
provider, and the files and secrets the machines' configuration refers to."""

from __future__ import annotations

import argparse
import sys

from healer.cli import exits
from healer.cli.common import config_path
from healer.config import ClusterConfig, HealerConfig, load_config
from healer.suggest import did_you_mean


def cmd_validate(args: argparse.Namespace) -> int:
    from healer.config.warnings import config_warnings
    from healer.provisioning.userdata import check_references

    path = config_path(args)
    config = load_config(path)
    problems = plugin_problems(config, path)
    # What `healer apply` would need from each provider and cannot get (docs/provisioning.md).
    problems += [f"{path}: {p}" for p in _infra_problems(config)]
    # Files and secrets the machines' configuration refers to (docs/security.md).
    problems += [p for c in config.clusters for p in check_references(c, where=f"{path}: ")]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return exits.USAGE  # as `healer run` exits on the same problems
    print(f"{path}: OK")
    for c in config.clusters:
        pools = ", ".join(f"{p.name} ({p.role}, {p.size})" for p in c.pools)
        print(f"  cluster {c.name}: provider {c.provider.plugin}; pools: {pools}")
        for line in _infra_report(c):
            print(f"    {line}")
    # Valid but probably unwanted (unarbitrated reboots, ...): said, not refused.
    for warning in config_warnings(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return 0


def plugin_problems(config: HealerConfig, path: str) -> list[str]:
    """The clusters whose provider plugin is not installed (`validate` and `run` alike)."""
    from healer.cloud.registry import available_plugins
    from healer.config.loader import place

    plugins = available_plugins()
    return [
        f"{place(path, ('clusters', i, 'provider', 'plugin'))}: clusters[{i}].provider.plugin: "
        f"unknown plugin {c.provider.plugin!r} "
        f"(available: {', '.join(plugins) or 'none'}){did_you_mean(c.provider.plugin, plugins, list_known=False)}"
        for i, c in enumerate(config.clusters)
        if c.provider.plugin not in plugins
    ]


def _infra_problems(config: HealerConfig) -> list[str]:
    from healer.cloud.registry import capabilities_for
    from healer.provisioning.desired import desired_state

    return [
        problem
        for c in config.clusters
        for problem in desired_state(
            c, capabilities_for(c.provider.plugin, c.provider.options)
        ).problems
    ]


def _infra_report(cluster: ClusterConfig) -> list[str]:
    from healer.cloud.registry import capabilities_for
    from healer.provisioning.desired import capability_report

    caps = capabilities_for(cluster.provider.plugin, cluster.provider.options)
    return capability_report(cluster, caps)
