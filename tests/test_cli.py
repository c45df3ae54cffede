"""The `seqlens` command line, called in-process through `main(argv)` (plus one real
`python -m seqlens` run for the no-traceback error path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import seqlens
from seqlens.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def hook_table(out: str) -> dict[str, str]:
    """``{hook name: shape text}`` from the table printed by ``seqlens hooks``."""
    rows = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].startswith("[") and "hook_" in parts[0]:
            rows[parts[0]] = parts[1].strip()
    return rows


# ----------------------------------------------------------------------------- info


def test_info_reports_versions_zoo_and_backends(capsys):
    rc, out, err = run_cli(capsys, "info")
    assert rc == 0, err
    assert torch.__version__ in out
    assert seqlens.__version__ in out
    for name in ("transformer_lens", "nnsight", "transformers", "triton", "CUDA", "CPU threads"):
        assert name in out
    for name in seqlens.models.zoo.names():
        assert name in out
    assert "chunked" in out and "ref" in out


def test_info_json(capsys):
    rc, out, _ = run_cli(capsys, "info", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["packages"]["torch"] == torch.__version__
    assert set(info["zoo"]) == set(seqlens.models.zoo.names())
    scan = info["kernel_backends"]["selective_scan"]
    assert "chunked" in scan and "ref" in scan
    triton_runs = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    assert ("triton" in scan) == triton_runs
    assert set(info["kernel_backends"]) == {"selective_scan", "gated_linear_attention", "linear_recurrence",
                                            "attention_stats", "ssd"}


# ----------------------------------------------------------------------------- hooks


def test_hooks_transformer_table(capsys):
    rc, out, err = run_cli(capsys, "hooks", "tiny-transformer")
    assert rc == 0, err
    assert out.splitlines()[1].startswith("arch: transformer ")
    rows = hook_table(out)
    assert rows["blocks.0.mixer.hook_pattern"] == "[1, 4, 8, 8]"
    assert rows["blocks.0.mixer.hook_q"] == "[1, 8, 4, 16]"
    assert rows["blocks.1.mixer.hook_rot_k"] == "[1, 8, 4, 16]"  # rotary only
    assert rows["blocks.1.hook_resid_mid"] == "[1, 8, 64]"
    assert "hook_pos_embed" not in rows
    names = list(rows)
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_out"


def test_hooks_json_matches_model(capsys):
    rc, out, _ = run_cli(capsys, "hooks", "tiny-gpt2", "--json", "--seq-len", "5", "--batch", "2")
    assert rc == 0
    data = json.loads(out)
    shapes = {h["name"]: h["shape"] for h in data["hooks"]}
    model = seqlens.load("tiny-gpt2")
    assert set(shapes) == set(model.hook_names())  # every hook fires; listed in execution order
    assert list(shapes)[:3] == ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"]
    assert shapes["hook_pos_embed"] == [2, 5, 64]  # learned positions only
    assert shapes["blocks.0.mixer.hook_attn_scores"] == [2, 4, 5, 5]
    assert "blocks.0.mixer.hook_rot_q" not in shapes
    assert data["arch"] == "transformer" and data["tap_positions"] is None


def test_hooks_mamba_state_taps(capsys):
    rc, out, err = run_cli(capsys, "hooks", "tiny-mamba")
    assert rc == 0, err
    rows = hook_table(out)
    assert rows["blocks.0.mixer.hook_state"] == "[1, 1, 128, 16]"  # [B, T, d_inner, d_state]
    assert rows["blocks.1.mixer.hook_delta"] == "[1, 8, 128]"
    assert "blocks.0.hook_resid_mid" not in rows  # no MLP, no resid_mid
    assert "state taps at positions [7]" in out
    rc, out, _ = run_cli(capsys, "hooks", "tiny-mamba", "--taps", "2,5", "--batch", "3")
    assert rc == 0
    assert hook_table(out)["blocks.1.mixer.hook_state"] == "[3, 2, 128, 16]"


def test_hooks_fox_log_forget(capsys):
    rc, out, _ = run_cli(capsys, "hooks", "tiny-fox", "--seq-len", "6")
    assert rc == 0
    rows = hook_table(out)
    assert rows["blocks.0.mixer.hook_log_decay"] == "[1, 6, 4]"
    assert "hook_pos_embed" not in rows and "blocks.0.mixer.hook_rot_q" not in rows


def test_hooks_local_directory(capsys, tmp_path):
    cfg = seqlens.ModelConfig(arch="transformer", vocab_size=32, d_model=16, n_layers=1, n_heads=2,
                              n_ctx=16, positions="rotary", rotary_dim=4, parallel_residual=True)
    seqlens.build(cfg, seed=1).save(tmp_path / "neox")
    rc, out, err = run_cli(capsys, "hooks", str(tmp_path / "neox"), "--seq-len", "4")
    assert rc == 0, err
    assert f"model: {tmp_path / 'neox'}" in out
    rows = hook_table(out)
    assert rows["blocks.0.mixer.hook_pattern"] == "[1, 2, 4, 4]"
    assert rows["blocks.0.mlp.hook_out"] == "[1, 4, 16]"
    assert "blocks.0.hook_resid_mid" not in rows  # parallel residual


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", ["hooks", "demo"])
def test_unknown_model_exit_2(capsys, tmp_path, command):
    rc, out, err = run_cli(capsys, command, "no-such-model")
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "no-such-model" in err and "tiny-mamba" in err  # names the input and the choices
    rc, _, err = run_cli(capsys, command, str(tmp_path))  # a directory without a checkpoint
    assert rc == 2 and "config.json" in err


@pytest.mark.parametrize("argv, expected", [
    (["hooks", "tiny-gpt2", "--seq-len", "600"], "n_ctx=512"),  # learned positions: hard limit
    (["hooks", "tiny-fox", "--taps", "3"], "KV cache"),  # attention has no fixed-size state
    (["hooks", "tiny-mamba", "--taps", "8"], "--taps"),  # out of range for seq_len 8
    (["hooks", "tiny-mamba", "--seq-len", "0"], "--seq-len"),
])
def test_bad_input_exit_2(capsys, argv, expected):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert expected in err and len(err.strip().splitlines()) == 1


def test_no_traceback_from_module_entry(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-m", "seqlens", "hooks", "no-such-model"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("seqlens hooks: error:") and len(res.stderr.strip().splitlines()) == 1


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()


# ----------------------------------------------------------------------------- demo


@pytest.mark.parametrize("model, heads", [("tiny-mamba", 8), ("tiny-gpt2", 4)])
def test_demo(capsys, model, heads):
    rc, out, err = run_cli(capsys, "demo", model, "--seq-len", "12")
    assert rc == 0, err
    assert "agreement (tol 0.0001): ok" in out
    assert f"mixer_pattern(tokens, layer=0): [1, {heads}, 12, 12]" in out
    n_params = sum(p.numel() for p in seqlens.load(model).parameters())
    assert f"parameters: {n_params:,}" in out


def test_bench_mamba_cpu_runs_at_toy_size(capsys, tmp_path):
    import json

    rc = main(["bench", "mamba-cpu", "--lengths", "40", "--repeats", "1", "--d-model", "32",
               "--d-state", "4", "--vocab", "50", "--out", str(tmp_path)])
    assert rc == 0
    assert "| 40 |" in capsys.readouterr().out
    row = json.loads((tmp_path / "metrics.json").read_text())["rows"][0]
    assert row["max_abs_logit_diff"] < 1e-4  # the two models really hold the same weights
    assert row["hf_largest"] == [1, 64, 40, 4]  # control: the tracker sees HF's [B, D, L, N]
    assert not row["ours_allocates_BDLN"]


@pytest.mark.slow
def test_bench_kernels_smoke_runs_every_case(capsys, tmp_path):
    """The GPU suite's code on tiny shapes (Triton interpreter on CPU): every case reports."""
    import json

    assert main(["bench", "kernels", "--smoke", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert {r["case"] for r in rows} == {"selective_scan", "selective_scan taps every 64", "gla", "simple_gla",
                                         "linear_recurrence", "attention_stats"}
    assert all(r["ours_ms"] > 0 for r in rows)
    sdpa = next(r for r in rows if r["case"] == "attention_stats")
    assert sdpa["baseline"] == "SDPA forward" and sdpa["ratio"] > 0
    assert "| selective_scan |" in capsys.readouterr().out


def test_zoo_list_prints_every_organism(capsys):
    from seqlens.models import zoo

    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in zoo.organisms():
        assert name in out
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(zoo.organisms())


def test_train_cli_recipe_file_and_errors(capsys, tmp_path):
    from seqlens.models import ModelConfig
    from seqlens.models.train import Recipe

    recipe = Recipe(name="cli", model=ModelConfig(arch="lstm", vocab_size=16, d_model=16, n_layers=1,
                                                  d_hidden=16, pattern_heads=4),
                    data="task:induction", data_kwargs={"seq_len": 12, "vocab_size": 16}, steps=3,
                    batch_size=2, warmup=1, eval_every=3, eval_batches=1, metric="accuracy")
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] >= 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["train", "no-such-recipe", "--out", str(tmp_path / "x")]) == 2
    assert "RECIPE" in capsys.readouterr().err
    path.write_text("{}")
    assert main(["train", str(path), "--out", str(tmp_path / "y")]) == 2
