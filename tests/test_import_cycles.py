"""The seqlens package has no import cycle (scripts/import_cycles.py, function-level imports
included) and no analysis module imports the trainer."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checker():
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles():
    ic = checker()
    graph = ic.edges(ic.modules(ROOT))
    assert {"seqlens.models.io", "seqlens.models.hf", "seqlens.models.zoo", "seqlens.tasks.data"} <= set(graph)
    assert ic.cycles(graph) == []


# studies whose measurement is a training run (a trajectory; a stand-in organism the zoo lacks):
# scripts at the top of the graph that nothing imports, so the trainer stays out of every analysis
TRAINING_STUDIES = {"seqlens.studies.induction_phase_change", "seqlens.studies.fox_forgetting"}


def test_analyses_do_not_import_the_trainer():
    ic = checker()
    graph = ic.edges(ic.modules(ROOT))
    analysis = ("seqlens.circuits", "seqlens.probes", "seqlens.app", "seqlens.studies")
    offenders = sorted(m for m, targets in graph.items()
                       if m.startswith(analysis) and m not in TRAINING_STUDIES and "seqlens.models.train" in targets)
    assert not any(t in TRAINING_STUDIES for targets in graph.values() for t in targets)
    assert offenders == []


def test_the_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.setuptools]
        packages = ["seqlens", "seqlens.models"]
        [tool.setuptools.package-dir]
        "seqlens" = "seqlens"
        "seqlens.models" = "models"
    """))
    (tmp_path / "seqlens").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "seqlens" / "__init__.py").write_text("")
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "a.py").write_text("from .b import f\n")
    (tmp_path / "models" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from seqlens.models import c\n"
        "def f():\n    from seqlens.models.a import g\n")
    (tmp_path / "models" / "c.py").write_text("from . import b\n")
    ic = checker()
    graph = ic.edges(ic.modules(tmp_path))
    assert graph["seqlens.models.b"] == {"seqlens.models.a"}  # TYPE_CHECKING imports never run
    assert ic.cycles(graph) == [["seqlens.models.a", "seqlens.models.b"]]
    assert ic.main(["import_cycles.py", str(tmp_path)]) == 1
