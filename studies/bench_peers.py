"""Benchmark: seqlens against the tools people would otherwise use, as time ratios in one process.

* GPT-2-small-sized model (random weights, B=1, L=1024, CPU), the same weights in every tool:
  forward and ``run_with_cache`` against TransformerLens 4's ``TransformerBridge``; our forward
  with a no-op hook on every hook point against our plain forward (the hook overhead); nnsight
  ``trace`` + ``save`` of one block's output on our model against the same on the Hugging Face
  model; the Hugging Face forward for reference.
* Mamba: forward against Hugging Face ``MambaForCausalLM`` (its PyTorch path); ``mixer_pattern``
  (implicit attention, one layer) against TransformerLens' ``run_with_cache`` +
  ``compute_effective_attention`` on the bridge of that HF model, with the largest difference
  between the two patterns (ours averages channels in ``pattern_heads`` groups, so theirs is
  averaged the same way) as a cross-check.
* SAE training vs a minimal PyTorch loop and LRP vs gradient × input: the rows of
  ``seqlens bench sae`` / ``seqlens bench lrp`` (run here, in this process).

    seqlens bench peers [--seq-len 1024] [--mamba-d-model 256] [--repeats 3] [--skip sae,lrp] [--smoke] [--out DIR]

Timings are medians of ``--repeats`` alternating runs after a warm-up (:func:`bench_sae.medians`);
``ratio`` is peer time / seqlens time (above 1: seqlens is faster). Prints a table and writes
``metrics.json`` to ``--out`` (default ``runs/bench_peers``). ``--smoke`` runs tiny shapes: it
checks that the script works and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from seqlens.studies.bench_sae import medians

GPT2_SMALL = dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257)
GPT2_TINY = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=97)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def word_tokenizer(vocab: int, directory: Path):
    """A word-level tokenizer over ``vocab`` ids, saved beside the config (the bridge wants one)."""
    import tokenizers
    import transformers

    words = ["<bos>"] + [f"w{i}" for i in range(1, vocab)]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<bos>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<bos>",
                                               unk_token="<bos>")
    tok.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory)  # read back: the bridge wants its name_or_path


def bridge_of(hf, directory: Path):
    """TransformerLens 4's bridge around ``hf`` itself (same weights, offline)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf.config.save_pretrained(directory)
    tok = word_tokenizer(hf.config.vocab_size, directory)
    return TransformerBridge.boot_transformers(str(directory), hf_model=hf, device="cpu", tokenizer=tok)


def gpt2_trio(size: dict, n_pos: int, directory: Path):
    """A random HF GPT-2 (eager attention), our conversion of it and its TransformerBridge."""
    import transformers

    from seqlens.models.hf import from_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_positions=n_pos, attn_implementation="eager", **size)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    return hf, from_hf(hf).eval(), bridge_of(hf, directory)


def ratio_rows(t: dict[str, float], pairs: list[tuple[str, str, str]]) -> list[dict]:
    """One row per ``(what, ours, peer)``: both medians and peer / ours."""
    return [{"what": what, "seqlens": ours, "peer": peer, "seqlens_s": t[ours], "peer_s": t[peer],
             "ratio": t[peer] / t[ours]} for what, ours, peer in pairs]


def bench_gpt2(size: dict, L: int, repeats: int, directory: Path) -> tuple[list[dict], dict]:
    from nnsight import NNsight

    hf, ours, bridge = gpt2_trio(size, L, directory)
    tokens = torch.randint(1, size["vocab_size"], (1, L), generator=torch.Generator().manual_seed(0))
    noop = [(name, lambda x, hook=None: None) for name in ours.hook_dict]
    n_ours, n_hf, mid = NNsight(ours), NNsight(hf), size["n_layer"] // 2

    def ours_all_hooks():
        with ours.hooks(fwd_hooks=noop):
            ours(tokens)

    def nnsight_ours():
        with n_ours.trace(tokens):
            out = n_ours.blocks[mid].output.save()
        return out

    def nnsight_hf():
        with n_hf.trace(tokens):
            out = n_hf.transformer.h[mid].output.save()
        return out

    with torch.no_grad():
        check = {"max_abs_logit_diff_vs_bridge": float((ours(tokens) - bridge(tokens)).abs().max()),
                 "max_abs_logit_diff_vs_hf": float((ours(tokens) - hf(tokens).logits).abs().max())}
        t = medians({"ours forward": lambda: ours(tokens), "bridge forward": lambda: bridge(tokens),
                     "hf forward": lambda: hf(tokens), "ours forward, no-op hook on every point": ours_all_hooks,
                     "ours run_with_cache": lambda: ours.run_with_cache(tokens),
                     "bridge run_with_cache": lambda: bridge.run_with_cache(tokens),
                     "nnsight trace+save on ours": nnsight_ours, "nnsight trace+save on hf": nnsight_hf},
                    "cpu", repeats)
    rows = ratio_rows(t, [("forward vs TL bridge", "ours forward", "bridge forward"),
                          ("run_with_cache vs TL bridge", "ours run_with_cache", "bridge run_with_cache"),
                          ("forward vs HF forward", "ours forward", "hf forward"),
                          ("hook overhead: all hooks vs plain", "ours forward",
                           "ours forward, no-op hook on every point"),
                          ("nnsight trace+save: ours vs HF", "nnsight trace+save on ours", "nnsight trace+save on hf")])
    return rows, {**check, "hook_points": len(noop), "seq_len": L, **size}


def bench_mamba(d_model: int, layers: int, L: int, pattern_len: int, repeats: int,
                directory: Path) -> tuple[list[dict], dict]:
    from seqlens.studies.bench_cpu_mamba import build_pair

    hf, ours = build_pair(d_model, 16, layers, 1024, 0)
    bridge = bridge_of(hf, directory)
    for block in bridge.blocks:  # TL's Python scan: HF's own path computes dt without firing dt_proj's hook,
        block.mixer.eager_scan = True  # which compute_effective_attention reads from the cache
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1024, (1, L), generator=gen)
    short = torch.randint(0, 1024, (1, pattern_len), generator=gen)
    H = ours.cfg.pattern_heads

    def tl_pattern():
        _, cache = bridge.run_with_cache(short)
        return bridge.blocks[0].mixer.compute_effective_attention(cache, 0, include_dt_scaling=True)

    with torch.no_grad():
        mine, theirs = ours.mixer_pattern(short, 0), tl_pattern()
        theirs = theirs.reshape(theirs.shape[0], H, -1, *theirs.shape[-2:]).mean(2)
        check = {"max_abs_pattern_diff_vs_tl": float((mine - theirs).abs().max()),
                 "max_abs_pattern": float(theirs.abs().max())}
        t = medians({"ours forward": lambda: ours(tokens), "hf forward": lambda: hf(tokens, use_cache=False),
                     "ours mixer_pattern": lambda: ours.mixer_pattern(short, 0), "tl effective attention": tl_pattern},
                    "cpu", repeats)
    rows = ratio_rows(t, [(f"Mamba forward (L={L}) vs HF", "ours forward", "hf forward"),
                          (f"Mamba pattern (L={pattern_len}) vs TL effective attention", "ours mixer_pattern",
                           "tl effective attention")])
    return rows, {**check, "d_model": d_model, "layers": layers, "seq_len": L, "pattern_len": pattern_len}


def borrowed_rows(out: Path, smoke: bool, repeats: int, skip: set[str]) -> list[dict]:
    """The SAE and LRP benchmarks' own ratio rows (their scripts, run in this process)."""
    from seqlens.studies import bench_lrp, bench_sae

    rows = []
    extra = ["--smoke"] if smoke else ["--repeats", str(repeats)]
    if "sae" not in skip:
        bench_sae.main(["--device", "cpu", "--out", str(out / "sae"), *extra])
        for r in json.loads((out / "sae" / "metrics.json").read_text())["rows"]:
            rows.append({"what": f"SAE {r['bench']} vs {r['baseline']} (s per 1M rows)", "seqlens": "seqlens",
                         "peer": r["baseline"], "seqlens_s": 1e6 / r["seqlens_tok_s"], "peer_s": 1e6 / r["baseline_tok_s"],
                         "ratio": r["ratio"]})
    if "lrp" not in skip:
        bench_lrp.main(["--out", str(out / "lrp"), *extra])
        m = json.loads((out / "lrp" / "metrics.json").read_text())
        lrp, gxi = m["rows"]
        rows.append({"what": f"LRP ({lrp['method']}, {m['model']}, L={m['seq_len']}) vs gradient x input",
                     "seqlens": lrp["method"], "peer": "gxi", "seqlens_s": lrp["seconds"], "peer_s": gxi["seconds"],
                     "ratio": gxi["seconds"] / lrp["seconds"]})
    return rows


def print_table(rows: list[dict], flush: bool = False) -> None:
    if not rows:
        return
    w = max(len(r["what"]) for r in rows)
    print(f"{'comparison':<{w}}  {'seqlens s':>10}  {'peer s':>10}  {'peer/seqlens':>12}")
    for r in rows:
        print(f"{r['what']:<{w}}  {r['seqlens_s']:>10.4f}  {r['peer_s']:>10.4f}  {r['ratio']:>12.2f}")
    print(flush=flush)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seqlens bench peers", description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--mamba-d-model", type=int, default=256)
    p.add_argument("--mamba-layers", type=int, default=2)
    p.add_argument("--pattern-len", type=int, default=128, help="TL's effective attention is O(D·N·L²) in memory")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated: gpt2, mamba, sae, lrp")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat: a check that the script runs")
    p.add_argument("--out", type=Path, default=Path("runs/bench_peers"))
    a = p.parse_args(argv)
    if a.smoke:
        a.seq_len, a.mamba_d_model, a.mamba_layers, a.pattern_len, a.repeats = 32, 32, 1, 16, 1
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            "platform": platform.platform(), "repeats": a.repeats, "smoke": a.smoke,
            "versions": {d: _version(d) for d in ("seqlens", "torch", "transformer-lens", "transformers", "nnsight")}}
    rows, checks = [], {}

    def record(new_rows: list[dict]) -> None:  # each part is printed and saved as soon as it is done
        rows.extend(new_rows)
        print_table(new_rows, flush=True)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "metrics.json").write_text(json.dumps({"meta": meta, "checks": checks, "rows": rows}, indent=2))

    print(f"seqlens vs peers, median of {a.repeats} alternating runs; {meta['machine']}; {meta['versions']}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "gpt2" not in skip:
            r, checks["gpt2"] = bench_gpt2(GPT2_TINY if a.smoke else GPT2_SMALL, a.seq_len, a.repeats, Path(tmp, "g"))
            record(r)
        if "mamba" not in skip:
            r, checks["mamba"] = bench_mamba(a.mamba_d_model, a.mamba_layers, a.seq_len, a.pattern_len, a.repeats,
                                             Path(tmp, "m"))
            record(r)
    record(borrowed_rows(a.out, a.smoke, a.repeats, skip))
    print("\nall rows:")
    print_table(rows)
    print("checks:", json.dumps(checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
