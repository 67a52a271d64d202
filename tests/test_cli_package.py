"""The wheel carries what the product needs at run time (healer/share: the lab and example
configs, the daemon's and the node agent's systemd units, the dashboard), and the checkout's
top-level copies cannot drift from it because they are links to it.

The slow test builds an sdist from a copy of the sources, the wheel from that sdist, installs the
wheel alone into a fresh virtual environment (its dependencies come from .venv through a .pth
file, without healer's own editable install) and runs `healer validate` and `healer lab
--scenario crash` from there, outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from healer.store import schema

ROOT = Path(__file__).resolve().parent.parent
SHARE = ROOT / "healer" / "share"
# Top-level path in the checkout -> what it links to in the package (the design card keeps the
# top-level directories; the package holds the one copy).
LINKS = {
    "config": SHARE / "config",
    "systemd": SHARE / "systemd",
    "docs/grafana-dashboard.json": SHARE / "dashboards" / "grafana-dashboard.json",
}
AGENT_UNITS = {
    "healer/share/systemd/healer-agent.service",
    "healer/share/systemd/healer-agent-shutdown.service",
    "healer/share/systemd/apt-daily-upgrade.service.d/healer-agent.conf",
}


def _shared_files() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in SHARE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"
    }


@pytest.mark.parametrize("top", sorted(LINKS))
def test_top_level_copies_are_links_to_the_package(top: str) -> None:
    path = ROOT / top
    assert path.is_symlink(), f"{top} must be a link to {LINKS[top].relative_to(ROOT)}, not a copy"
    assert path.resolve() == LINKS[top].resolve()
    # Relative, so the link works in any clone.
    assert not os.path.isabs(os.readlink(path))


def test_the_package_finds_its_files_through_importlib_resources() -> None:
    from healer.provisioning.userdata import AgentFiles
    from healer.share import shared

    assert shared("config", "lab.yaml").is_file()
    agent = AgentFiles.discover()
    assert agent is not None
    assert set(agent.units) == {
        "healer-agent.service",
        "healer-agent-shutdown.service",
        "apt-daily-upgrade.service.d/healer-agent.conf",
    }


def _build(tmp: Path) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from a copy of the sources, the wheel from the unpacked sdist,
    as `python -m build` does; nothing is written into the checkout."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("healer", "providers"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    dist = tmp / "dist"
    backend = "import sys; from setuptools import build_meta as b; print(b.build_{}(sys.argv[1]))"
    run = {"capture_output": True, "text": True, "timeout": 120, "check": True}
    out = subprocess.run([sys.executable, "-c", backend.format("sdist"), dist], cwd=src, **run)
    sdist = dist / out.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    [unpacked] = (tmp / "unpacked").iterdir()
    out = subprocess.run([sys.executable, "-c", backend.format("wheel"), dist], cwd=unpacked, **run)
    return sdist, dist / out.stdout.strip().splitlines()[-1]


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv with only the wheel installed; the dependencies are .venv's, seen through a
    directory of links that leaves out healer's own (editable) install."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    deps = tmp / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("healer", "__editable__", "providers", "_healer")):
            (deps / entry.name).symlink_to(entry)
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "_healer_test_deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q"),
            *("--no-deps", "--no-index", "--no-compile", "--ignore-installed", wheel),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    sdist, wheel = _build(tmp)
    return sdist, wheel, _fresh_venv(tmp, wheel)


def _healer(
    venv: Path, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALER_", "PYTHON"))}
    return subprocess.run(
        [venv / "bin" / "healer", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.xdist_group("cli-package")  # one worker builds the wheel (``installed``) for both
def test_the_sdist_and_the_wheel_carry_the_shared_files(installed: tuple[Path, Path, Path]) -> None:
    sdist, wheel, _ = installed
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    missing = _shared_files() - in_wheel
    assert not missing, f"package data missing from the wheel (pyproject package-data): {missing}"
    assert in_wheel >= AGENT_UNITS
    assert {"healer/agent/healer_agent.py", "healer/agent/bundle.py"} <= in_wheel
    # The state schema (healer/store/schema.py reads it at every open).
    migrations = {f"healer/store/migrations/{m.name}" for m in schema.migrations()}
    assert migrations and migrations <= in_wheel
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert not _shared_files() - in_sdist


@pytest.mark.slow
@pytest.mark.xdist_group("cli-package")
def test_the_installed_wheel_validates_its_examples_and_runs_the_lab(
    installed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, _, venv = installed
    where = _healer(venv, "--version", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    [site] = (venv / "lib").glob("python3*/site-packages")
    probe = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import healer, providers; print(healer.__file__, providers.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert all(p.startswith(str(site)) for p in probe.stdout.split()), probe.stdout
    examples = sorted((site / "healer" / "share" / "config").glob("*.yaml"))
    assert {"lab.yaml", "provision-lab.yaml"} <= {p.name for p in examples}
    for example in examples:
        done = _healer(venv, "validate", "-c", str(example), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{example}: OK" in done.stdout
    # The agent is found in the installed package: the user data carries it.
    agent = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "from healer.provisioning.userdata import AgentFiles as A; a = A.discover(); "
            "print(a.script_path, sorted(a.units))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "healer-agent.service" in agent.stdout, agent
    report = tmp_path / "crash.json"
    lab = _healer(
        venv,
        "lab",
        "--scenario",
        "crash",
        "--report",
        str(report),
        "--state-dir",
        str(tmp_path / "lab-state"),
        cwd=tmp_path,
        timeout=150,
    )
    assert lab.returncode == 0, (lab.stdout + lab.stderr)[-4000:]
    result = json.loads(report.read_text())
    assert result["ok"]
    assert [r["result"] for r in result["remediations"]] == ["succeeded"]
