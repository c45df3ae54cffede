"""Cross-check seqlens' SAEs against the real SAELens, both ways (run by hand; sae-lens is not a
dependency: it pins TransformerLens < 4, so it lives in a throwaway virtual environment).

    python3 -m venv /tmp/saelens && /tmp/saelens/bin/pip install torch==2.13.0 && /tmp/saelens/bin/pip install sae-lens
    /tmp/saelens/bin/python scripts/saelens_compat.py DIR   # SAELens writes its SAEs, codes on a fixed input
    .venv/bin/python scripts/saelens_compat.py DIR          # seqlens loads them, compares codes, writes its own
    /tmp/saelens/bin/python scripts/saelens_compat.py DIR   # SAELens loads seqlens' SAEs, compares codes

Each run prints one line per SAE directory it checked (codes and reconstructions equal or not)
and exits 1 if any differ. The side is chosen by whether ``sae_lens`` is importable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

D_IN, D_SAE = 12, 40


def _randomise(sae, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=gen) * 0.5)
        if "MatchingPursuit" in type(sae).__name__:
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    return sae


def _compare(name: str, f, x_hat, ref) -> bool:
    same = torch.allclose(f, ref["f"], atol=1e-5) and torch.allclose(x_hat, ref["x_hat"], atol=1e-5)
    print(f"{name}: codes and reconstruction {'equal' if same else 'DIFFER'} "
          f"(max |df| {float((f - ref['f']).abs().max()):.2e})")
    return same


def saelens_side(root: Path, X: torch.Tensor) -> bool:
    from sae_lens import SAE
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAE, MatchingPursuitSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    ok = True
    for d in sorted(root.glob("seqlens_*")):
        sae = SAE.load_from_disk(d)
        ok &= _compare(d.name, *_codes(sae, X), torch.load(d / "out.pt"))
        want = json.loads((d / "cfg.json").read_text())["metadata"].get("hook_name")
        if sae.cfg.metadata.hook_name != want:
            print(f"{d.name}: SAELens read hook_name {sae.cfg.metadata.hook_name!r}, expected {want!r}")
            ok = False
    base = dict(d_in=D_IN, d_sae=D_SAE)
    made = {
        "standard": StandardSAE(StandardSAEConfig(**base)),
        "standard_layer_norm": StandardSAE(StandardSAEConfig(**base, normalize_activations="layer_norm")),
        "standard_no_b_dec_in": StandardSAE(StandardSAEConfig(**base, apply_b_dec_to_input=False)),
        "topk": TopKSAE(TopKSAEConfig(**base, k=5)),
        "topk_rescaled": TopKSAE(TopKSAEConfig(**base, k=5, rescale_acts_by_decoder_norm=True)),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(**base)),
        "matching_pursuit": MatchingPursuitSAE(MatchingPursuitSAEConfig(
            **base, residual_threshold=0.0, max_iterations=6, stop_on_duplicate_support=False)),
        "matching_pursuit_defaults": MatchingPursuitSAE(MatchingPursuitSAEConfig(**base)),
    }
    for i, (name, sae) in enumerate(made.items()):
        _randomise(sae, i).save_model(root / f"saelens_{name}")
    batch = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**base, k=4))
    _randomise(batch, 99).topk_threshold = torch.tensor(0.2, dtype=torch.double)
    batch.save_inference_model(root / "saelens_batchtopk")  # saved as a JumpReLU SAE
    for d in root.glob("saelens_*"):
        f, x_hat = _codes(SAE.load_from_disk(d), X)
        torch.save({"f": f, "x_hat": x_hat}, d / "out.pt")
    print(f"wrote {len(made) + 1} SAELens directories to {root}")
    return ok


def _codes(sae, X):
    with torch.no_grad():
        return sae.encode(X), sae(X)


def seqlens_side(root: Path, X: torch.Tensor) -> bool:
    from seqlens.probes import sae as S

    ok = all(_compare(d.name, *_codes(S.load(d), X), torch.load(d / "out.pt"))
             for d in sorted(root.glob("saelens_*")))
    extra = {"topk": {"k": 5}, "matching_pursuit": {"max_iterations": 6}}
    for i, arch in enumerate(S.ARCHITECTURES):
        cfg = S.SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, metadata={"hook_name": "h", "model_name": "m"},
                          **extra.get(arch, {}))
        cfg.metadata["hook_name"] = f"blocks.0.hook_{arch}"
        _randomise(S.make_sae(cfg), i).save(root / f"seqlens_{arch}")
    Xt = torch.randn(2048, D_IN, generator=torch.Generator().manual_seed(1)) * 3 + 1
    for arch, kw in {"batchtopk": {"k": 4}, "matching_pursuit": {"k": 4}, "topk": {"k": 4},
                     "standard": {"l1_coefficient": 0.1}}.items():  # trained: folding, BatchTopK -> jumprelu
        store = S.ActivationStore.from_tensor(Xt, hook_name="blocks.1.hook_resid_post", model_name="tiny")
        S.train_sae(store, architecture=arch, d_sae=D_SAE, steps=30, batch_size=128, progress=False,
                    **kw).save(root / f"seqlens_trained_{arch}")
    for d in root.glob("seqlens_*"):
        f, x_hat = _codes(S.load(d), X)
        torch.save({"f": f, "x_hat": x_hat}, d / "out.pt")
    print(f"wrote seqlens directories to {root}")
    return ok


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    root = Path(argv[0])
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "X.pt").exists():
        torch.save(torch.randn(64, D_IN, generator=torch.Generator().manual_seed(0)) * 2, root / "X.pt")
    X = torch.load(root / "X.pt")
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        return 0 if seqlens_side(root, X) else 1
    return 0 if saelens_side(root, X) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
