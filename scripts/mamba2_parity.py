"""Max |Δ logits| between seqlens and transformers' Mamba2ForCausalLM on tiny random checkpoints
(built locally, saved to a temporary directory, loaded back; no network), for docs/mamba2.md:

    python scripts/mamba2_parity.py [--length 300]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import seqlens
from seqlens.testing.hf_mamba2 import random_hf_mamba2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=300)
    length = ap.parse_args().length
    toks = torch.randint(0, 101, (2, length), generator=torch.Generator().manual_seed(0))
    for groups in (1, 2, 8):
        hf = random_hf_mamba2(groups)
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours = seqlens.load(d)
        with torch.no_grad():
            ref, full = hf(toks).logits, ours(toks)
            streamed = ours.stream(toks, chunk_size=37).logits
        print(f"n_groups={groups} L={length}: forward {(full - ref).abs().max():.1e}  "
              f"stream {(streamed - ref).abs().max():.1e}  (logit std {ref.std():.2f})")


if __name__ == "__main__":
    main()
