"""Peak memory of loading a sharded Hugging Face checkpoint with ``seqlens.models.hf.from_hf``.

Builds a random Llama-shaped checkpoint with transformers (no network), saves it in shards, then
loads it in fresh subprocesses and reports the growth of the peak resident set size (Linux
``VmHWM`` from ``/proc/self/status``, after imports) next to the checkpoint's size:

* ``stream``: ``from_hf(dir)`` (tensor by tensor, copied into the model layer by layer);
* ``stream_bf16``: the same into a bfloat16 model;
* ``whole``: the reference it replaced, every shard read into one dict first (``load_file``, all
  pages touched as the copy into the model did) while the model is built: about twice the checkpoint.

    python scripts/hf_load_memory.py [--hidden 1024] [--layers 8] [--shard-mb 100]

docs/architectures.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, torch
from seqlens.models.hf import from_hf
from seqlens.models.hf_read import weight_files
def peak_kb():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1])
mode, directory = sys.argv[1], sys.argv[2]
before = peak_kb()
if mode == "whole":
    from pathlib import Path
    from safetensors.torch import load_file
    tensors = {}
    for path in weight_files(Path(directory)):
        tensors.update(load_file(str(path)))
    for t in tensors.values():  # what copying the dict into the model did: every page read
        float(t.reshape(-1)[::1024].sum())
    model = from_hf(directory)  # the model itself; `tensors` is the extra full copy
else:
    model = from_hf(directory, dtype=torch.bfloat16 if mode == "stream_bf16" else torch.float32)
after = peak_kb()
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"mode": mode, "peak_growth_mb": (after - before) / 1024, "model_mb": size / 2**20}))
"""


def build_checkpoint(directory: Path, hidden: int, layers: int, shard_mb: int) -> float:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                                   intermediate_size=hidden * 8 // 3, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory, max_shard_size=f"{shard_mb}MB")
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shard-mb", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size = build_checkpoint(Path(tmp), args.hidden, args.layers, args.shard_mb)
        shards = len(list(Path(tmp).glob("*.safetensors")))
        print(json.dumps({"checkpoint_mb": size, "shards": shards}))
        for mode in ("stream", "stream_bf16", "whole"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, tmp], capture_output=True, text=True,
                                 check=True)
            print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
