#!/usr/bin/env bash
# GPU run book (docs/kernels.md "GPU run book"): everything that needs a CUDA device, in one go,
# with all output in one file. Run from the repository root on a GPU machine:
#
#     bash scripts/gpu_check.sh [OUTPUT_FILE]        # default runs/gpu_check/gpu_check_<UTC time>.txt
#
# Sections: versions (driver, torch/CUDA, Triton, the optional baselines mamba-ssm,
# flash-linear-attention, flash-attn), the `gpu`-marked tests, `seqlens bench kernels --device cuda`
# (vs mamba-ssm / fla where importable, SDPA always), `seqlens bench sae --device cuda`, and a
# harvest + SAE training through torchrun (one rank per GPU, NCCL). Nothing is downloaded. A failing section is
# reported and the next one still runs; the exit status is 1 if any section failed.
# PYTHON=... picks the interpreter (default: .venv/bin/python if present, else python).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT=${1:-runs/gpu_check/gpu_check_$(date -u +%Y%m%dT%H%M%SZ).txt}
WORK=$(dirname "$OUT")/work_$$
mkdir -p "$(dirname "$OUT")" "$WORK"
exec > >(tee "$OUT") 2>&1
failed=0

section() { echo; echo "===== $* [$(date -u +%H:%M:%SZ)]"; }
run() {  # run a command as its own section; record a failure without stopping
    section "$*"
    "$@"
    local rc=$?
    [ $rc -eq 0 ] || { echo "----- FAILED (exit $rc): $*"; failed=1; }
}

section "versions"
date -u
git log -1 --format='commit %H %cd' 2>/dev/null
nvidia-smi || echo "nvidia-smi: not found"
"$PY" - <<'PYEOF'
import importlib, torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}")
for mod in ("triton", "mamba_ssm", "fla", "flash_attn", "transformer_lens", "nnsight", "transformers"):
    try:
        print(f"{mod:<17}", getattr(importlib.import_module(mod), "__version__", "installed"))
    except Exception as e:  # noqa: BLE001 - an optional baseline that is absent or broken
        print(f"{mod:<17} not importable ({type(e).__name__})")
PYEOF
run "$PY" -m seqlens info
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "no CUDA device visible: the GPU sections would only skip; stopping here"; exit 1; }

run "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests
run "$PY" -m seqlens bench kernels --device cuda --out "$WORK/kernels"
run "$PY" -m seqlens bench sae --device cuda --out "$WORK/sae"

# torchrun on the GPUs, one rank per GPU: harvest into a store, train an SAE on it (docs/scale.md).
# NCCL needs one GPU per rank: with a single GPU this is a 1-rank run (no process group).
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
echo "torchrun ranks: $NGPU"
run "$PY" -m torch.distributed.run --nproc-per-node "$NGPU" -m seqlens harvest text-mamba \
    --hook blocks.1.hook_resid_post --seq-len 256 --max-tokens 262144 --out "$WORK/store" --quiet
run "$PY" -m torch.distributed.run --nproc-per-node "$NGPU" -m seqlens sae train --store "$WORK/store" \
    --architecture topk --d-sae 1024 --k 16 --steps 300 --batch-size 4096 --out "$WORK/sae_topk" --quiet

section "metrics files"
for f in "$WORK"/*/metrics.json; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done
section "done: $([ $failed -eq 0 ] && echo 'every section passed' || echo 'some sections FAILED'); output in $OUT"
exit $failed
