"""Make the shared tiny models (tests/models/tiny_models.py) importable from tests/circuits."""

import sys
from pathlib import Path

_MODELS = str(Path(__file__).resolve().parents[1] / "models")
if _MODELS not in sys.path:
    sys.path.insert(0, _MODELS)
