"""Max |Δ logits| between seqlens and transformers' Mamba2ForCausalLM on tiny random checkpoints
(built locally, saved to a temporary directory, loaded back; no network), for docs/mamba2.md:

    python scripts/mamba2_parity.py [--length 300]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

import seqlens


def random_mamba2(groups: int, seed: int = 0) -> torch.nn.Module:
    """A tiny random transformers Mamba-2 with perturbed norms, A, D and biases (as the tests)."""
    torch.manual_seed(seed)
    cfg = transformers.Mamba2Config(vocab_size=101, hidden_size=32, num_hidden_layers=2, state_size=8,
                                    num_heads=8, head_dim=8, n_groups=groups, expand=2, conv_kernel=4,
                                    chunk_size=16, initializer_range=0.2)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "conv1d.bias", "dt_bias")):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 4 + 0.5))
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=300)
    length = ap.parse_args().length
    toks = torch.randint(0, 101, (2, length), generator=torch.Generator().manual_seed(0))
    for groups in (1, 2, 8):
        hf = random_mamba2(groups)
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
