"""Tiny and planted models for tests and examples: built in seconds on CPU, never downloaded.

- :mod:`.tiny`: a random model of every architecture (``CONFIGS``, ``make``, ``tokens``);
- :mod:`.planted`, :mod:`.planted_ov`, :mod:`.planted_retrieval`, :mod:`.planted_sinks`:
  hand-built attention models whose heads are known (ground truth for the circuit finders);
- :mod:`.scan`: random selective-scan inputs and a labelled closeness check (kernel tests);
- :mod:`.tokenizers`: a local Hugging Face tokenizer that adds BOS, as Llama's does.
- :mod:`.hf_mamba2`: a tiny random transformers Mamba-2 with perturbed weights (parity checks).

Import the submodule you need (``from seqlens.testing.tiny import make``); this package imports
nothing on its own, so ``import seqlens`` stays light.
"""
