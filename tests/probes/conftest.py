"""Make the shared test helpers importable from tests/probes: tests/models (tiny_models.py) and
tests/circuits (planted*.py)."""

import sys
from pathlib import Path

for _folder in ("models", "circuits"):
    _path = str(Path(__file__).resolve().parents[1] / _folder)
    if _path not in sys.path:
        sys.path.insert(0, _path)
