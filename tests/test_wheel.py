"""The package as a user gets it: a wheel, installed (not editable), run away from the checkout.

One module fixture builds the wheel from a copy of the checkout's sources (so that setuptools' ``build/``
never lands in the checkout, and no stale ``build/lib`` leaks into the wheel) and installs it with
``pip install --target``. The subprocesses then run from an empty directory with ``PYTHONPATH`` on the
installed copy, which comes before site-packages and so before the editable install's import hook;
every test asserts that what ran came from the installed copy, not from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sam_engine"
CONF = PACKAGE / "conf"


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build_wheel(out: Path, source: Path) -> Path:
    """``pip wheel`` without build isolation (setuptools is in the venv); with isolation only as a fallback."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", ".", "-w", str(out)]
    result = _run(cmd, cwd=source)
    if result.returncode != 0:  # e.g. setuptools missing from the environment: let pip fetch the build backend
        first = result
        cmd.remove("--no-build-isolation")
        cmd.remove("--no-index")
        result = _run(cmd, cwd=source, timeout=300)
        assert result.returncode == 0, (
            f"pip wheel failed without build isolation:\n{first.stdout}\n{first.stderr}\n"
            f"and with it:\n{result.stdout}\n{result.stderr}"
        )
    wheels = list(out.glob("sam_engine-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel once and install it: {"wheel", "site", "env", "cwd"}."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # what the sdist would hold: the project file, the readme, the package
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "sam_engine", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheel = _build_wheel(tmp / "dist", source)

    site = tmp / "site"
    result = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                   str(wheel)], cwd=tmp)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"

    cwd = tmp / "empty"  # no sam_engine/ beside the command, no outputs/ left in the checkout
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return {"wheel": wheel, "site": site, "env": env, "cwd": cwd}


def _help(installed: dict, cmd: list[str]) -> str:
    result = _run(cmd, cwd=installed["cwd"], env=installed["env"])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out, out
    assert result.stdout.splitlines()[0].startswith("usage:"), out
    return out


def test_wheel_holds_every_config_and_console_script(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_text = wheel.read(entry_points).decode()

    checkout_yaml = {p.relative_to(ROOT).as_posix() for p in CONF.rglob("*.yaml")}
    wheel_yaml = {n for n in names if n.startswith("sam_engine/conf/") and n.endswith(".yaml")}
    assert checkout_yaml, "no YAML under sam_engine/conf in the checkout"
    assert wheel_yaml == checkout_yaml, (
        f"missing from the wheel: {sorted(checkout_yaml - wheel_yaml)}; extra: {sorted(wheel_yaml - checkout_yaml)}"
    )
    assert "sam_engine/conf/__init__.py" in names

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    section = entry_text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    declared = {}
    for line in section.splitlines():
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            declared[key] = value
    assert declared == scripts


PROBE = """
import json, sys
import sam_engine, sam_engine.conf, sam_engine.cli
import sam_engine.label.__main__, sam_engine.engine.__main__
from sam_engine.model import build_sam
from sam_engine.model.config import VARIANTS, variant_names
model = build_sam("vit_b")
print(json.dumps({
    "files": {name: getattr(sys.modules[name], "__file__", None) for name in
              ("sam_engine", "sam_engine.conf", "sam_engine.cli", "sam_engine.label.__main__",
               "sam_engine.engine.__main__", "sam_engine.model.config")},
    "variants_dir": str(VARIANTS),
    "variants": variant_names(),
    "parameters": sum(p.numel() for p in model.parameters()),
    "loaded": sorted(str(getattr(m, "__file__", None)) for n, m in list(sys.modules.items())
                     if n == "sam_engine" or n.startswith("sam_engine.")),
}))
"""


def test_installed_package_builds_vit_b_from_its_own_files(installed):
    result = _run([sys.executable, "-c", PROBE], cwd=installed["cwd"], env=installed["env"])
    assert result.returncode == 0, result.stdout + result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    site = installed["site"].resolve()

    def installed_here(path: str | None) -> bool:
        return path is not None and Path(path).resolve().is_relative_to(site)

    assert Path(probe["files"]["sam_engine"]).resolve() == site / "sam_engine" / "__init__.py"
    for name, path in probe["files"].items():
        assert installed_here(path), f"{name} imported from {path}, not from {site}"
    assert installed_here(probe["variants_dir"]), probe["variants_dir"]
    from_checkout = [p for p in probe["loaded"] if Path(p).resolve().is_relative_to(PACKAGE)]
    assert not from_checkout, f"modules imported from the checkout: {from_checkout}"

    assert probe["variants"] == ["tiny", "vit_b", "vit_h", "vit_l"]
    assert 93e6 < probe["parameters"] < 94.5e6, probe["parameters"]


@pytest.mark.parametrize("command", ["label", "engine"])
def test_installed_command_help(installed, command):
    out = _help(installed, [sys.executable, "-m", f"sam_engine.{command}", "--help"])
    assert "== Config" in out


def test_installed_console_script_help(installed):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    bin_dir = installed["site"] / "bin"
    present = {p.name for p in bin_dir.iterdir() if p.is_file() and os.access(p, os.X_OK)}
    assert set(scripts) <= present, f"console scripts not installed: {sorted(set(scripts) - present)}"
    script = bin_dir / "sam-label"
    assert script.read_text().splitlines()[0] == f"#!{sys.executable}"
    out = _help(installed, [str(script), "--help"])
    assert "== Config" in out
