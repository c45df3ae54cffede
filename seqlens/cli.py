"""The ``seqlens`` command line: environment report, hook tables and a quick self-check.

    seqlens info                      versions, devices, zoo models, kernel backends
    seqlens hooks MODEL [--json]      every hook name with its shape, in execution order
    seqlens demo [MODEL]              load a model and check forward == step == stream
    seqlens app [--expose] [--model-dir DIR] [STREAMLIT_OPTIONS]   the dashboard (127.0.0.1 by default)
    seqlens harvest MODEL --hook H --out DIR     activations to an on-disk store (torchrun-ready)
    seqlens sae train --store DIR --d-sae M ...  an SAE on a store, data-parallel under torchrun
    seqlens study list | NAME [--smoke] [--out DIR] [...]   the paper studies (one per paper)

``MODEL`` is a zoo name (``seqlens info`` lists them) or a local checkpoint directory (seqlens
or Hugging Face format). Nothing here touches the network. Bad input (unknown model, sequence
longer than a learned-position context, ...) ends with a one-line message on stderr and exit
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Sequence

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own status for bad arguments; we use it for bad models / inputs too
# `hooks` caches every activation and `demo` steps token by token: inputs beyond these are refused
MAX_TOKENS = 2**16
MAX_DEMO_TOKENS = 4096
MAX_PATTERN = 2**27  # values of the attention pattern `hooks` caches (512 MiB in float32)
# exceptions that mean bad input (arguments, files, models), reported as one line with exit 2;
# SEQLENS_DEBUG=1 shows the traceback instead
INPUT_ERRORS = (ValueError, TypeError, KeyError, OSError, NotImplementedError, MemoryError)

# distributions reported by `seqlens info` (display name, distribution name)
REPORTED_PACKAGES = (
    ("torch", "torch"),
    ("transformer_lens", "transformer-lens"),
    ("nnsight", "nnsight"),
    ("transformers", "transformers"),
    ("triton", "triton"),
)


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 2."""


# ----------------------------------------------------------------------------- helpers


def package_version(dist: str) -> str:
    """Installed version of distribution ``dist``, or ``"not installed"`` (no import needed)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def error_text(exc: BaseException) -> str:
    """One line for ``exc``; KeyError's repr-quoting of its message is undone."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def load_model(name: str):
    """``seqlens.load(name)``, turning the loader's documented failures into a CLIError."""
    import seqlens

    try:
        return seqlens.load(name)
    except (FileNotFoundError, KeyError, ValueError, TypeError, NotImplementedError, OSError) as e:
        raise CLIError(error_text(e)) from None


def random_tokens(model, batch: int, seq_len: int, seed: int, max_tokens: int | None = None):
    """Seeded uniform token ids ``[batch, seq_len]`` on the model's device; sizes are bounded
    (``max_tokens``, default :data:`MAX_TOKENS`) so a typo cannot exhaust memory."""
    import torch

    if batch <= 0:
        raise CLIError(f"--batch: expected a positive integer, got {batch}")
    if seq_len <= 0:
        raise CLIError(f"--seq-len: expected a positive integer, got {seq_len}")
    if not 0 <= seed < 2**63:
        raise CLIError(f"--seed: expected an integer in [0, 2**63), got {seed}")
    limit = MAX_TOKENS if max_tokens is None else max_tokens
    if batch * seq_len > limit:
        raise CLIError(f"--batch / --seq-len: {batch} x {seq_len} = {batch * seq_len:,} tokens exceeds this "
                       f"command's limit of {limit:,}")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=gen)
    return tokens.to(model.device)


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    from seqlens.models.summary import count_parameters as count

    return count(model)


def arch_summary(model) -> dict[str, Any]:
    """The config fields that say what a model is, for the header line and ``--json``."""
    from seqlens.models.summary import arch_summary as summary

    return summary(model)


def arch_line(summary: dict[str, Any]) -> str:
    rest = " ".join(f"{k}={v}" for k, v in summary.items() if k != "arch")
    return f"arch: {summary['arch']} {rest}"


def supports_taps(model) -> bool:
    from seqlens.models.hooks import supports_taps as taps

    return taps(model)


def format_table(rows: Sequence[tuple[str, str]], header: tuple[str, str]) -> str:
    width = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    lines = [f"{header[0]:<{width}}  {header[1]}", f"{'-' * width}  {'-' * len(header[1])}"]
    lines += [f"{a:<{width}}  {b}" for a, b in rows]
    return "\n".join(lines)


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


# ----------------------------------------------------------------------------- info


def gather_info() -> dict[str, Any]:
    import torch

    import seqlens
    from seqlens.models import zoo
    from seqlens.models.kernels import available_backends

    cuda = torch.cuda.is_available()
    return {
        "seqlens": seqlens.__version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "packages": {name: package_version(dist) for name, dist in REPORTED_PACKAGES},
        "cuda": torch.cuda.get_device_name(0) if cuda else "no",
        "cpu_threads": {"torch": torch.get_num_threads(), "os": os.cpu_count()},
        "zoo": {name: zoo.describe(name) for name in zoo.names()},
        "kernel_backends": available_backends(cuda),
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = gather_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    rows = [("seqlens", info["seqlens"]), ("python", info["python"])]
    rows += list(info["packages"].items())
    rows.append(("CUDA", info["cuda"]))
    threads = info["cpu_threads"]
    rows.append(("CPU threads", f"{threads['torch']} (torch), {threads['os']} (os)"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print("\nzoo models:")
    print("\n".join(f"  {name:<18} {text}" for name, text in info["zoo"].items()))
    print("\nkernel backends:")
    print("\n".join(f"  {op}: {', '.join(b)}" for op, b in info["kernel_backends"].items()))
    return EXIT_OK


# ----------------------------------------------------------------------------- hooks


def collect_hooks(model, tokens, taps: list[int] | None) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """``(name, shape)`` of every hook that fired on ``tokens`` in execution order, and the
    names of declared hooks that did not fire (:func:`seqlens.models.hooks.record_hooks`)."""
    from seqlens.models.hooks import record_hooks

    return record_hooks(model, tokens, taps)


def parse_taps(text: str | None, seq_len: int) -> list[int]:
    """Tap positions from ``--taps`` (default: the last position), each in ``[0, seq_len)``."""
    if text is None:
        return [seq_len - 1]
    try:
        taps = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise CLIError(f"--taps: expected comma-separated integers, got {text!r}") from None
    bad = [p for p in taps if not 0 <= p < seq_len]
    if not taps or bad:
        raise CLIError(f"--taps: expected positions in [0, {seq_len}) (--seq-len {seq_len}), got {text!r}")
    return taps


def cmd_hooks(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    tokens = random_tokens(model, args.batch, args.seq_len, args.seed)
    pattern = args.batch * model.n_groups * args.seq_len**2  # the cached [B, H, L, L] of attention
    if model.is_softmax and pattern > MAX_PATTERN:
        raise CLIError(f"--batch / --seq-len: the cached attention pattern would hold {pattern:,} values, "
                       f"above this command's limit of {MAX_PATTERN:,}; use a shorter --seq-len")
    if args.taps is not None and not supports_taps(model):
        raise CLIError(f"--taps: arch {model.cfg.arch!r} has no fixed-size recurrent state to tap "
                       "(its state is the KV cache)")
    taps = parse_taps(args.taps, args.seq_len) if supports_taps(model) else None
    try:
        fired, silent = collect_hooks(model, tokens, taps)
    except (ValueError, NotImplementedError) as e:
        raise CLIError(error_text(e)) from None
    summary = arch_summary(model)
    if args.json:
        print(json.dumps({"model": str(args.model), **summary, "batch": args.batch, "seq_len": args.seq_len,
                          "seed": args.seed, "tap_positions": taps,
                          "hooks": [{"name": n, "shape": s} for n, s in fired],
                          "not_fired": silent}, indent=2))
        return EXIT_OK
    print(f"model: {args.model}")
    print(arch_line(summary))
    tap_note = f", state taps at positions {taps}" if taps else ""
    print(f"input: batch={args.batch} seq_len={args.seq_len} seed={args.seed}{tap_note}; {len(fired)} hooks\n")
    print(format_table([(n, shape_text(s)) for n, s in fired], ("hook", "shape")))
    if silent:
        print(f"\nnot fired on this input: {', '.join(silent)}")
    return EXIT_OK


# ----------------------------------------------------------------------------- demo


def agreement(model, tokens, chunk_size: int) -> dict[str, float]:
    """Max |Δ logits| of step-by-step and chunked streaming against the parallel forward."""
    import torch

    with torch.no_grad():
        ref = model(tokens)
        state = model.init_state(tokens.shape[0])
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            steps.append(logits)
        stepped = torch.stack(steps, dim=1)
        streamed = model.stream(tokens, chunk_size=chunk_size).logits
    return {"step": float((stepped - ref).abs().max()), "stream": float((streamed - ref).abs().max())}


def cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - t0
    if not 0 <= args.tol < float("inf"):
        raise CLIError(f"--tol: expected a finite non-negative number, got {args.tol}")
    tokens = random_tokens(model, 1, args.seq_len, args.seed, max_tokens=MAX_DEMO_TOKENS)
    chunk = max(1, args.seq_len // 3)
    try:
        diffs = agreement(model, tokens, chunk)
        pattern = model.mixer_pattern(tokens, 0)
    except (ValueError, NotImplementedError) as e:
        raise CLIError(error_text(e)) from None
    summary = arch_summary(model)
    ok = max(diffs.values()) <= args.tol
    print(f"model: {args.model}")
    print(arch_line(summary))
    print(f"parameters: {summary['parameters']:,}")
    print(f"hook points: {len(model.hook_dict)}")
    print(f"input: batch=1 seq_len={args.seq_len} seed={args.seed}")
    print(f"max |forward - step|:   {diffs['step']:.3e}")
    print(f"max |forward - stream|: {diffs['stream']:.3e} (chunk_size={chunk})")
    print(f"agreement (tol {args.tol:g}): {'ok' if ok else 'FAILED'}")
    print(f"mixer_pattern(tokens, layer=0): {shape_text(pattern.shape)}  [batch, heads, L, L]")
    print(f"time: load {load_s:.2f} s, total {time.perf_counter() - t0:.2f} s")
    return EXIT_OK if ok else 1


# ----------------------------------------------------------------------------- zoo / train


def zoo_rows_text(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    table = [("name", "arch", "params", "task", "metric", "value", "extra", "train s")]
    for r in rows:
        extra = ", ".join(f"{k}={fmt(v)}" for k, v in (r.get("extra") or {}).items())
        table.append((r["name"], r["arch"], f"{r['params']:,}", r["task"], r["metric"],
                      fmt(r["value"]) if r["built"] else "not built", extra or "-", fmt(r["train_s"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def cmd_zoo(args: argparse.Namespace) -> int:
    from seqlens.models import zoo

    if args.zoo_command == "list":
        rows = zoo.table()
        print(json.dumps(rows, indent=2) if args.json else zoo_rows_text(rows))
        if not args.json:
            print("\npresets (untrained): " + ", ".join(sorted(zoo.PRESETS)))
        return EXIT_OK
    from seqlens.zoo_probes import PROBES

    try:
        metrics = zoo.build_organism(args.name, out_dir=args.out, resume=not args.restart, force=args.force,
                                     probes=PROBES)
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise CLIError(error_text(e)) from None
    print(json.dumps(metrics, indent=2))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from seqlens.models import zoo
    from seqlens.models.train import Recipe, train

    if args.recipe in zoo.organisms():
        recipe = zoo.organisms()[args.recipe].recipe
    elif Path(args.recipe).is_file():
        from seqlens.models.io import CheckpointError, read_json_object

        try:
            recipe = Recipe.from_dict(read_json_object(Path(args.recipe), "RECIPE"))
        except CheckpointError as e:  # already names the file
            raise CLIError(error_text(e)) from None
        except (ValueError, TypeError, KeyError) as e:
            raise CLIError(f"RECIPE: {args.recipe} is not a valid recipe file: {error_text(e)}") from None
    else:
        raise CLIError(f"RECIPE: {args.recipe!r} is neither an organism ({sorted(zoo.organisms())}) nor a "
                       "recipe JSON file")
    if args.steps is not None:
        if args.steps <= 0:
            raise CLIError(f"--steps: expected a positive integer, got {args.steps}")
        recipe = recipe.replace(steps=args.steps)
    try:  # the output folder and the model size are checked before training starts
        result = train(recipe, args.out, resume=not args.restart, force=args.force)
    except (ValueError, TypeError, OSError) as e:
        raise CLIError(error_text(e)) from None
    print(json.dumps({"metrics": result.metrics, "train_seconds": round(result.train_seconds, 1),
                      "out": str(args.out)}, indent=2))
    return EXIT_OK


# ----------------------------------------------------------------------------- bench

# benchmark name -> module under seqlens.studies with a ``main(argv) -> int``
BENCHMARKS = {"mamba-cpu": "bench_cpu_mamba", "kernels": "bench_kernels", "sae": "bench_sae", "lrp": "bench_lrp",
              "peers": "bench_peers", "patterns": "bench_patterns"}


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"seqlens.studies.{BENCHMARKS[args.name]}")
    return module.main(args.bench_args)


# ----------------------------------------------------------------------------- harvest / sae train
# Both run unchanged under `torchrun --nproc-per-node N` (docs/scale.md): every rank joins the
# process group torchrun describes, harvests its shards / trains on its share of each batch, and
# rank 0 alone prints (and saves the SAE).

TOKEN_DTYPES = ("int64", "int32", "int16", "uint8")


def corpus_tokens(model, data: str, seq_len: int, max_tokens: int):
    """``[n, seq_len]`` token ids from ``data`` ("stdlib": the stdlib corpus' train split; a ``.npy``
    file of token ids, memory-mapped; any other file: text, tokenized for ``model``), cut into
    consecutive windows, at most ``max_tokens`` tokens in all."""
    import numpy as np
    import torch

    from seqlens.text import encode, is_byte_level

    if seq_len <= 0 or max_tokens < seq_len:
        raise CLIError(f"--seq-len / --max-tokens: expected 0 < seq_len <= max_tokens, got {seq_len} / {max_tokens}")
    if data == "stdlib":
        from seqlens.corpus import StdlibCorpus

        corpus = StdlibCorpus()
        flat = corpus.tokens("train") if is_byte_level(model) else torch.tensor(
            encode(corpus.text("train").decode("utf-8", "replace"), model.tokenizer), dtype=torch.int32)
    elif not os.path.isfile(data):
        raise CLIError(f"--data: expected 'stdlib' or a file, got {data!r}")
    elif data.endswith(".npy"):
        ids = np.load(data, mmap_mode="r")
        if ids.ndim != 1 or ids.dtype.name not in TOKEN_DTYPES + ("uint16", "uint32"):
            raise CLIError(f"--data: {data} must hold a 1-D array of integer token ids, got {ids.dtype} {ids.shape}")
        ids = ids[:max_tokens]
        flat = torch.from_numpy(np.asarray(ids, dtype=np.int32) if ids.dtype.name not in TOKEN_DTYPES else ids)
    else:
        with open(data, "rb") as f:
            raw = f.read()
        flat = (torch.frombuffer(bytearray(raw), dtype=torch.uint8) if is_byte_level(model) else
                torch.tensor(encode(raw.decode("utf-8", "replace"), model.tokenizer), dtype=torch.int32))
    n = min(max_tokens, len(flat)) // seq_len
    if n == 0:
        raise CLIError(f"--seq-len: {data} holds {len(flat):,} tokens, fewer than one sequence of {seq_len}")
    return flat[:n * seq_len].reshape(n, seq_len)


def cmd_harvest(args: argparse.Namespace) -> int:
    import torch

    from seqlens.probes.sae import distributed as D
    from seqlens.probes.sae.store import harvest

    device = D.init_from_env(args.device)
    try:
        model = load_model(args.model).to(device).eval()
        tokens = corpus_tokens(model, args.data, args.seq_len, args.max_tokens)
        positions = None if args.positions is None else [int(p) for p in args.positions.split(",") if p.strip()]
        store = harvest(model, args.hook, tokens, positions=positions, batch_size=args.batch_size, out=args.out,
                        shard_size=args.shard_size, dtype=getattr(torch, args.dtype), progress=not args.quiet)
        if D.world()[0] == 0:
            print(json.dumps({"out": str(args.out), "rows": len(store), "d_in": store.d_in, "shards": store.n_shards,
                              "ranks": D.world()[1], "hook": args.hook, "sequences": tokens.shape[0]}, indent=2))
    finally:
        D.shutdown()
    return EXIT_OK


def cmd_sae(args: argparse.Namespace) -> int:
    from seqlens.probes.sae import distributed as D
    from seqlens.probes.sae.store import ActivationStore
    from seqlens.probes.sae.train import train_sae

    device = D.init_from_env(args.device)
    try:
        store = ActivationStore.open(args.store)
        options = {} if args.l1_coefficient is None else {"l1_coefficient": args.l1_coefficient}
        sae = train_sae(store, architecture=args.architecture, d_sae=args.d_sae, k=args.k, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device,
                        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                        normalize_activations=args.normalize, progress=not args.quiet, **options)
        if D.world()[0] == 0:
            sae.save(args.out)
            log = sae.training_log
            print(json.dumps({"out": str(args.out), "architecture": args.architecture, "d_sae": args.d_sae,
                              "steps": args.steps, "ranks": D.world()[1], "final_loss": log.loss[-1],
                              "final_l0": log.l0[-1], "final_fvu": log.fvu[-1]}, indent=2))
    finally:
        D.shutdown()
    return EXIT_OK


def add_scale_commands(sub) -> None:
    """``harvest`` and ``sae train`` (kept together so the parser edit stays local)."""
    p = sub.add_parser("harvest", help="harvest one hook's activations into an on-disk store (torchrun-ready)")
    p.add_argument("model", metavar="MODEL", help="zoo name or local checkpoint directory")
    p.add_argument("--hook", required=True, help="hook name (see `seqlens hooks MODEL`)")
    p.add_argument("--data", default="stdlib", help="'stdlib' (default), a .npy of token ids, or a text file")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--max-tokens", type=int, default=2**20, help="tokens to harvest at most (default 2**20)")
    p.add_argument("--out", required=True, help="store directory (rerun the same command to resume)")
    p.add_argument("--positions", default=None, help="comma-separated positions to keep (default all)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass (default 32)")
    p.add_argument("--shard-size", type=int, default=65536, help="rows per shard file (default 65536)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_harvest)

    p = sub.add_parser("sae", help="sparse autoencoders: `sae train` on an activation store (torchrun-ready)")
    ssub = p.add_subparsers(dest="sae_command", metavar="SAE_COMMAND", required=True)
    t = ssub.add_parser("train", help="train an SAE on a store written by `seqlens harvest`")
    t.add_argument("--store", required=True, help="activation store directory")
    t.add_argument("--architecture", default="topk",
                   choices=["standard", "topk", "batchtopk", "jumprelu", "matching_pursuit"])
    t.add_argument("--d-sae", type=int, required=True, help="number of latents")
    t.add_argument("--k", type=int, default=None, help="codes per sample (topk, batchtopk) / MP steps")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=1024, help="global batch (split over the ranks)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--l1-coefficient", type=float, default=None, help="standard SAEs (default 1.0)")
    t.add_argument("--normalize", default=None, choices=["none", "expected_average_only_in"],
                   help="input scaling (default: the architecture's)")
    t.add_argument("--out", required=True, help="SAE directory (SAELens format), written by rank 0")
    t.add_argument("--checkpoint-dir", default=None, help="resumable training state (shared by the ranks)")
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK when available)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sae)


# ----------------------------------------------------------------------------- app

APP_HELP = """usage: seqlens app [--expose] [--model-dir DIR ...] [STREAMLIT_OPTIONS ...]

Start the seqlens dashboard: `python -m streamlit run <seqlens/app/main.py> [STREAMLIT_OPTIONS]`.
It listens on 127.0.0.1 (this machine only) unless you pass --expose (every network interface) or
your own --server.address. The sidebar opens local checkpoints only under a --model-dir DIR
(repeatable; also $SEQLENS_MODEL_DIRS); by default only zoo models. Every other argument goes to
`streamlit run`, e.g. `seqlens app --server.port 8502 --server.headless true` (see `streamlit run
--help`). The exit status is Streamlit's."""


# Streamlit defaults that keep `seqlens app` offline and non-blocking on a fresh machine: no usage
# statistics, no first-run e-mail prompt, and a fixed address so it never looks up its external IP
OFFLINE_STREAMLIT = {"--browser.gatherUsageStats": "false", "--server.showEmailPrompt": "false",
                     "--browser.serverAddress": "localhost"}
LOCAL_ADDRESS = "127.0.0.1"  # where the dashboard listens unless exposed
STREAMLIT_PORT = 8501


def app_options(extra: list[str]) -> tuple[list[str], bool, list[str]]:
    """Split ``seqlens app``'s own options (``--expose``, ``--model-dir DIR`` / ``--model-dir=DIR``)
    from those that go to ``streamlit run``; returns ``(streamlit args, expose, model dirs)``."""
    rest, dirs, expose = [], [], False
    it = iter(extra)
    for arg in it:
        if arg == "--expose":
            expose = True
        elif arg == "--model-dir" or arg.startswith("--model-dir="):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if not value:
                raise CLIError("--model-dir: expected a directory")
            path = os.path.realpath(os.path.expanduser(value))
            if not os.path.isdir(path):
                raise CLIError(f"--model-dir: {value!r} is not a directory")
            dirs.append(path)
        else:
            rest.append(arg)
    return rest, expose, dirs


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` / ``--name=VALUE`` among streamlit's arguments (last wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def served_url(args: list[str], expose: bool) -> str:
    """What the dashboard listens on, as the line ``seqlens app`` prints before starting it."""
    port = option_value(args, "--server.port") or str(STREAMLIT_PORT)
    address = option_value(args, "--server.address")
    if address is None and expose:
        return f"every network interface, port {port} (--expose): http://localhost:{port} on this machine"
    if address in ("0.0.0.0", "::"):
        return f"every network interface ({address}), port {port}: http://localhost:{port} on this machine"
    host = address or LOCAL_ADDRESS
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_app(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    from seqlens.app import MAIN

    extra = list(args.streamlit_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if extra in (["-h"], ["--help"]):
        print(APP_HELP)
        return EXIT_OK
    if not MAIN.is_file():
        raise CLIError(f"the dashboard script {MAIN} is missing from this install")
    extra, expose, dirs = app_options(extra)
    given = {a.split("=", 1)[0] for a in extra if a.startswith("--")}  # the caller's settings win
    defaults = dict(OFFLINE_STREAMLIT)
    if not expose and "--server.address" not in given:  # this machine only, and its URL is the one shown
        defaults.update({"--server.address": LOCAL_ADDRESS, "--browser.serverAddress": LOCAL_ADDRESS})
    elif option_value(extra, "--server.address") not in (None, "0.0.0.0", "::"):
        defaults["--browser.serverAddress"] = option_value(extra, "--server.address")
    quiet = [x for opt, value in defaults.items() if opt not in given for x in (opt, value)]
    env = dict(os.environ)
    if dirs:
        env["SEQLENS_MODEL_DIRS"] = os.pathsep.join(dirs + [d for d in env.get("SEQLENS_MODEL_DIRS", "").split(
            os.pathsep) if d])
    print(f"seqlens app: serving {served_url(extra, expose)}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(MAIN), *quiet, *extra], env=env)
    # a SIGTERM to `seqlens app` stops the server too instead of orphaning it
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the server as well: let it shut down
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- study


def cmd_study(args: argparse.Namespace) -> int:
    """``study list`` prints every study with its claim; ``study NAME ARGS`` runs its ``main(ARGS)``."""
    import importlib

    from seqlens.studies.registry import STUDIES, get

    if args.name == "list":
        width = max(len(n) for n in STUDIES)
        for info in STUDIES.values():
            flag = "" if info.available else "  [not in this install]"
            print(f"{info.name:<{width}}  {info.claim}{flag}")
        return EXIT_OK
    try:
        info = get(args.name)
    except KeyError as e:
        raise CLIError(error_text(e)) from None
    if not info.available:
        raise CLIError(f"NAME: study {args.name!r} is registered but its module {info.module} is not in this install")
    return importlib.import_module(info.module).main(args.study_args)


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqlens", description="seqlens: interpretability workbench "
                                     "for sequence models (no network access).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="versions, devices, zoo models and kernel backends")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("hooks", help="list every hook name with its shape")
    p.add_argument("model", metavar="MODEL", help="zoo name or local checkpoint directory")
    p.add_argument("--seq-len", type=int, default=8, help="input length (default 8)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--taps", default=None, help="recurrent models: comma-separated positions for "
                   "hook_state (default: the last position)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_hooks)

    p = sub.add_parser("demo", help="load a model and check forward == step == stream")
    p.add_argument("model", metavar="MODEL", nargs="?", default="tiny-mamba",
                   help="zoo name or local checkpoint directory (default tiny-mamba)")
    p.add_argument("--seq-len", type=int, default=32, help="input length (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--tol", type=float, default=1e-4, help="max allowed |Δ logits| (default 1e-4)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("zoo", help="list the model organisms or rebuild one from its recipe")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    z = zsub.add_parser("list", help="name, arch, parameters, task, recorded metric, train time")
    z.add_argument("--json", action="store_true", help="print JSON instead of a table")
    z = zsub.add_parser("build", help="retrain an organism from its recipe")
    z.add_argument("name", metavar="NAME", help="organism name (see `seqlens zoo list`)")
    z.add_argument("--out", default=None, help="output directory (default: the shipped folder)")
    z.add_argument("--restart", action="store_true", help="ignore an interrupted run's resume point")
    z.add_argument("--force", action="store_true", help="write into a non-empty folder that is not this "
                   "organism's own output (its config.json and model.safetensors are overwritten)")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("train", help="train a recipe (organism name or recipe JSON file)")
    p.add_argument("recipe", metavar="RECIPE", help="organism name or path to a recipe .json")
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.add_argument("--restart", action="store_true", help="ignore an interrupted run's resume point")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder that is not this "
                   "recipe's own output (its config.json and model.safetensors are overwritten)")
    p.set_defaults(func=cmd_train)

    # prefix_chars="+": every argument, options included, is forwarded to `streamlit run`
    p = sub.add_parser("app", help="start the Streamlit dashboard (args go to `streamlit run`)",
                       prefix_chars="+", add_help=False)
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help="options of `streamlit run`")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("bench", help="run a benchmark study (args after NAME go to the study)")
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark (see --help)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("study", help="list the paper studies or run one (args after NAME go to the study)")
    p.add_argument("name", metavar="NAME", help="`list`, or a study name (see `seqlens study list`)")
    p.add_argument("study_args", nargs=argparse.REMAINDER, help="arguments of the study (see NAME --help)")
    p.set_defaults(func=cmd_study)

    add_scale_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on bad arguments (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except SystemExit as e:  # a benchmark's own argument parser: return its status, do not exit
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except CLIError as e:
        print(f"seqlens {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except INPUT_ERRORS as e:  # the one-line promise also holds for errors no command anticipated
        if os.environ.get("SEQLENS_DEBUG"):
            raise
        print(f"seqlens {args.command}: error: {type(e).__name__}: {error_text(e)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
