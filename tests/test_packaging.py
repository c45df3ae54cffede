"""Packaging: the repo folders map into the one `seqlens.*` namespace (docs/design.md, Layout), the
wheel ships exactly that namespace, and the `seqlens` console script is declared."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "circuits", "probes", "app", "studies")


def run_python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -c code`` from ``cwd`` with no PYTHONPATH, so the repo root is not on
    ``sys.path`` and only what is installed can be imported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("folder", FOLDERS)
def test_repo_folders_are_not_top_level_packages(tmp_path, folder):
    res = run_python(f"import {folder}", cwd=tmp_path)
    assert res.returncode != 0, f"`import {folder}` must fail outside the repo (got a top-level package)"
    assert "ModuleNotFoundError" in res.stderr


def test_namespace_imports_outside_repo(tmp_path):
    code = ("import seqlens, seqlens.models, seqlens.circuits, seqlens.probes, seqlens.app, "
            "seqlens.studies, seqlens.cli; print(seqlens.models.__file__)")
    res = run_python(code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).resolve() == ROOT / "models" / "__init__.py"


def copy_source(dst: Path) -> Path:
    """Copy the source tree without environments, VCS data or build leftovers, so the wheel is
    built from the sources alone (an in-tree build would write build/ into the repo and could
    pick up stale files from an earlier build)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", "runs", "*.pyc")
    return Path(shutil.copytree(ROOT, dst, ignore=ignore))


@pytest.mark.slow  # builds a wheel with pip
def test_wheel_contents(tmp_path):
    src = copy_source(tmp_path / "src")
    out = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "-q", "-w", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = out.glob("seqlens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("seqlens/__init__.py", "seqlens/cli.py", "seqlens/__main__.py",
                     "seqlens/models/base.py", "seqlens/models/kernels/__init__.py",
                     "seqlens/circuits/__init__.py", "seqlens/probes/__init__.py",
                     "seqlens/app/__init__.py", "seqlens/studies/__init__.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    # shipped model organisms (package data) travel with the wheel
    for shipped in sorted((ROOT / "models" / "organisms").glob("*/model.safetensors")):
        for f in ("model.safetensors", "config.json"):
            assert f"seqlens/models/organisms/{shipped.parent.name}/{f}" in names
    assert not any("/resume/" in n for n in names)
    stray = sorted(n for n in names if n.split("/")[0] in FOLDERS or n.startswith("tests/"))
    assert not stray, f"wheel has top-level files outside seqlens/: {stray[:10]}"
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "seqlens = seqlens.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_entry_point_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["seqlens"] == "seqlens.cli:main"
    eps = metadata.entry_points(group="console_scripts", name="seqlens")
    (ep,) = [e for e in eps if e.dist is not None and e.dist.name == "seqlens"]
    from seqlens.cli import main

    assert ep.load() is main
    script = Path(sysconfig.get_path("scripts")) / "seqlens"
    assert script.is_file(), f"console script {script} not installed"
