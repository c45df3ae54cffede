"""Short runs of the v2 text recipe (issue #16): text-retnet's config with and without the paper's
xPos rotation, with the paper's value dim, and text-gla's config as the yardstick. Prints the
validation bits/byte at every 100 steps (the table in docs/architectures.md, "RetNet against the
paper"; one thread, deterministic on CPU)::

    OMP_NUM_THREADS=1 python scripts/retnet_short_runs.py norot --steps 300 [--seed 1] [--out DIR]

Variants: ``norot`` (positions "learned", which recurrent models ignore: the shipped text-retnet),
``rot`` (the recipe's positions="rotary"), ``rot-dv2`` (and d_value 256), ``gla`` (text-gla).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from seqlens.models.recipes import _organisms
from seqlens.models.train import train

VARIANTS = ("norot", "rot", "rot-dv2", "gla")


def recipe_for(variant: str, steps: int, seed: int):
    """text-retnet's (or text-gla's) recipe with ``steps`` steps (the cosine follows them), an
    evaluation every 100 steps, and the variant's model change."""
    recipe = _organisms()["text-gla" if variant == "gla" else "text-retnet"].recipe
    model = recipe.model
    if variant == "norot":
        model = model.replace(positions="learned")
    if variant == "rot-dv2":
        model = model.replace(d_value=2 * model.key_dim)
    return recipe.replace(name=f"short-{variant}", model=model, steps=steps, eval_every=100, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="checkpoint folder (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe = recipe_for(args.variant, args.steps, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(recipe, out_dir=args.out or tmp, progress=True)
    print(f"{args.variant} seed {args.seed}: " + ", ".join(
        f"step {h['step']} {h['bits_per_byte']:.3f}" for h in res.history), f"({res.train_seconds:.0f} s)")


if __name__ == "__main__":
    main()
