"""Regression tests for issue 15 (hostile input): no code from checkpoint folders, no memory bombs
from a small config, no clobbered output folders, typed configs, the CLI's one-line promise,
states from another model, empty input, taps and the analyses' degenerate inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import seqlens
from seqlens.cli import main
from seqlens.memory import TensorMemoryTracker
from seqlens.models import ModelConfig, ModelState, build
from seqlens.models import train as T
from seqlens.models.io import CheckpointError

ARCHS = ["transformer", "fox", "mamba", "mamba2", "gla", "retnet", "mingru", "minlstm", "lstm"]
V = 32


def tiny(arch: str = "mamba", n_layers: int = 1, **changes) -> seqlens.SeqModel:
    cfg = ModelConfig(arch=arch, vocab_size=V, d_model=16, n_layers=n_layers, n_heads=2, n_ctx=64,
                      pattern_heads=2, **changes)
    return build(cfg, seed=0)


def toks(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(0))


def tiny_recipe(**changes) -> T.Recipe:
    base = T.Recipe(name="tiny-harden", model=ModelConfig(arch="lstm", vocab_size=16, d_model=16, n_layers=1,
                                                          d_hidden=16, pattern_heads=4),
                    data="task:induction", data_kwargs={"seq_len": 12, "vocab_size": 16}, steps=3,
                    batch_size=2, warmup=1, eval_every=3, eval_batches=1, metric="accuracy")
    return base.replace(**changes)


def rewrite_config(directory: Path, **changes) -> None:
    raw = json.loads((directory / "config.json").read_text())
    raw["seqlens"].update(changes)
    (directory / "config.json").write_text(json.dumps(raw))


# ----------------------------------------------------------------------------- 1: no code from folders


EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import PreTrainedTokenizer
class EvilTokenizer(PreTrainedTokenizer):
    pass
"""


def _evil_folder(tmp_path: Path, in_file: str) -> tuple[Path, Path]:
    """A loadable seqlens checkpoint whose ``in_file`` declares custom code (auto_map) that would
    write ``marker`` if it ever ran."""
    directory, marker = tmp_path / "ckpt", tmp_path / "MARKER"
    tiny("transformer").save(directory)
    (directory / "tokenization_evil.py").write_text(EVIL.format(marker=str(marker)))
    auto = {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
            "tokenizer_class": "EvilTokenizer"}
    if in_file == "tokenizer_config.json":
        (directory / in_file).write_text(json.dumps(auto))
    else:
        (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "EvilTokenizer"}))
        raw = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**raw, **auto}))
    return directory, marker


@pytest.mark.parametrize("in_file", ["tokenizer_config.json", "config.json"])
def test_auto_map_code_never_runs_and_never_prompts(tmp_path, in_file):
    directory, marker = _evil_folder(tmp_path, in_file)
    script = f"import seqlens; m = seqlens.load({str(directory)!r}); print('tokenizer', m.tokenizer)"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    # "y" on stdin is what a prompt would read as consent; a prompt on a terminal would hang (timeout)
    proc = subprocess.run([sys.executable, "-c", script], input="y\ny\n", capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "code from the checkpoint folder ran"
    assert "tokenizer None" in proc.stdout
    assert "auto_map" in proc.stderr and in_file in proc.stderr  # a warning naming the file
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr


def test_cli_hooks_on_auto_map_folder_does_not_hang(tmp_path):
    directory, marker = _evil_folder(tmp_path, "tokenizer_config.json")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "seqlens", "hooks", str(directory)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


# ----------------------------------------------------------------------------- 2: memory bombs


def test_load_arguments_are_checked():
    for bad in (123, None, ""):
        with pytest.raises(TypeError, match="name_or_dir"):
            seqlens.load(bad)
    with pytest.raises(ValueError, match="device"):
        seqlens.load("tiny-mamba", device="nope")


def test_huge_config_beside_tiny_weights_fails_before_allocating(tmp_path):
    tiny("transformer").save(tmp_path)
    rewrite_config(tmp_path, d_model=8192, n_layers=64, n_heads=64)
    with TensorMemoryTracker() as mem, pytest.raises(CheckpointError, match="config implies"):
        seqlens.load(tmp_path)
    assert mem.report.largest_bytes < 2**20, mem.report  # the weight file is ~50 kB


def test_million_layer_config_fails_before_building_layers(tmp_path):
    tiny("mamba").save(tmp_path)
    rewrite_config(tmp_path, n_layers=10**6)
    with TensorMemoryTracker() as mem, pytest.raises(CheckpointError, match=r"implies [\d,]+ parameters"):
        seqlens.load(tmp_path)
    assert mem.report.largest_bytes < 2**20


def test_recipe_model_size_is_capped(monkeypatch):
    from seqlens.models import sizing

    monkeypatch.setattr(sizing, "MAX_PARAMS", 10_000)
    with pytest.raises(ValueError, match=r"recipe.model: the config implies [\d,]+ parameters, above"):
        T.train(tiny_recipe(model=ModelConfig(arch="lstm", vocab_size=16, d_model=64, n_layers=4)), progress=False)
    with pytest.raises(ValueError, match="recipe.batch_size: 10000000 sequences"):
        T.train(tiny_recipe(batch_size=10**7), progress=False)
    # the estimate equals the real count, for every architecture
    for arch in ARCHS:
        model = tiny(arch, n_layers=3)
        assert sizing.estimate_parameters(model.cfg) == sum(p.numel() for p in model.parameters()), arch


@pytest.mark.parametrize("arch", ARCHS)
def test_load_roundtrip_through_meta_device(tmp_path, arch):
    model = tiny(arch, n_layers=2, tied_embeddings=arch == "mamba")
    model.save(tmp_path)
    loaded = seqlens.load(tmp_path)
    x = toks(2, 7)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    if arch == "mamba":
        assert loaded.unembed.weight is loaded.embed.weight


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_or_bool_weights_are_refused_not_cast(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    tiny("transformer").save(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["ln_final.weight"] = torch.ones_like(state["ln_final.weight"], dtype=dtype)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"weight 'ln_final.weight' has dtype"):
        seqlens.load(tmp_path)


# ----------------------------------------------------------------------------- 4: output folders


def test_train_refuses_a_foreign_folder_and_leaves_it_intact(tmp_path):
    other = tmp_path / "mine"
    tiny("gla").save(other)
    (other / "resume").mkdir()
    (other / "resume" / "experiment-log.txt").write_text("my notes")
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="out_dir: .* is not empty and was not written by a run of recipe"):
        T.train(tiny_recipe(), other, progress=False)
    with pytest.raises(ValueError, match="seqlens did not write"):  # --force never deletes a user's files
        T.train(tiny_recipe(), other, progress=False, force=True)
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before


def test_train_force_overwrites_only_its_own_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    T.train(tiny_recipe(), tmp_path, progress=False, force=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert json.loads((tmp_path / "config.json").read_text())["recipe"]["name"] == "tiny-harden"
    T.train(tiny_recipe(), tmp_path, progress=False)  # its own folder: no force needed to rebuild
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]


def test_train_output_must_be_a_writable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        T.train(tiny_recipe(), tmp_path / "file", progress=False)
    with pytest.raises(ValueError, match="not writable"):
        T.train(tiny_recipe(), tmp_path / "file" / "sub", progress=False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_train_read_only_output_fails_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="not writable"):
            T.train(tiny_recipe(), ro, progress=False)
    finally:
        ro.chmod(0o755)


def _interrupted_run(tmp_path, monkeypatch, recipe) -> Path:
    out = tmp_path / "run"
    real = T.get_batch

    def crash(r, step, split="train"):
        if split == "train" and step == 2:
            raise KeyboardInterrupt
        return real(r, step, split)

    monkeypatch.setattr(T, "get_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        T.train(recipe, out, progress=False, save_every=1)
    monkeypatch.setattr(T, "get_batch", real)
    assert json.loads((out / "resume" / "progress.json").read_text())["step"] == 2
    return out


def test_resume_refuses_another_recipes_checkpoint(tmp_path, monkeypatch):
    out = _interrupted_run(tmp_path, monkeypatch, tiny_recipe())
    other = tiny_recipe(name="other", lr=1e-2)
    with pytest.raises(ValueError, match="resume: the resume point .* belongs to another recipe"):
        T.train(other, out, progress=False)
    with pytest.raises(ValueError, match="not empty"):  # restarting there would discard it: not without force
        T.train(other, out, progress=False, resume=False)
    T.train(other, out, progress=False, resume=False, force=True)
    assert not (out / "resume").exists()
    assert json.loads((out / "config.json").read_text())["recipe"]["name"] == "other"
    # the same recipe resumes as before
    out2 = _interrupted_run(tmp_path / "again", monkeypatch, tiny_recipe())
    assert [h["step"] for h in T.train(tiny_recipe(), out2, progress=False).history] == [3]


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    model = tiny("mamba")
    model.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_write(m, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", half_write)
    with pytest.raises(OSError, match="disk full"):
        tiny("gla").save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either


def test_zoo_build_unknown_name():
    from seqlens.models import zoo

    with pytest.raises(KeyError, match="unknown organism 'nope'; organisms: .*induction-attn2"):
        zoo.build_organism("nope")
    with pytest.raises(KeyError, match="preset"):
        zoo.build_organism("tiny-mamba")


# ----------------------------------------------------------------------------- 5: config types


@pytest.mark.parametrize("field, value, error", [
    ("d_model", "64", TypeError), ("d_model", 2.5, TypeError), ("d_model", True, TypeError),
    ("n_layers", None, TypeError), ("arch", ["mamba"], TypeError), ("tied_embeddings", 1, TypeError),
    ("meta", [1], TypeError), ("norm_eps", float("nan"), TypeError), ("norm_eps", "1e-5", TypeError),
    ("norm_eps", 0.0, ValueError), ("norm_eps", -1e-5, ValueError), ("rotary_base", 0.0, ValueError),
    ("rotary_base", float("inf"), TypeError), ("gate_normalizer", -1.0, ValueError),
    ("d_head", 0, ValueError), ("norm", "batchnorm", ValueError),
])
def test_model_config_field_types_and_ranges(field, value, error):
    # mixer fields are checked by the arch's sub-config (AttentionConfig.d_head, ...)
    arch = "gla" if field == "gate_normalizer" else "transformer"
    with pytest.raises(error, match=rf"(ModelConfig|AttentionConfig|LinearAttentionConfig)\.{field}: expected"):
        ModelConfig(**{"arch": arch, field: value})


def test_field_validator_is_generic():
    from dataclasses import dataclass

    from seqlens.models.config import check_field_types

    @dataclass
    class Part:
        width: int
        scale: float | None = None
        pair: tuple[float, float] = (0.0, 1.0)

    check_field_types(Part(3, 1, (1, 2.5)))
    for bad in [Part(True), Part(3, float("nan")), Part(3, pair=(1.0,)), Part(3, pair=("a", 1.0))]:
        with pytest.raises(TypeError, match=r"Part\.(width|scale|pair): expected"):
            check_field_types(bad)


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "holds a JSON array; expected an object"),
    (b'"text"', "holds a JSON string"),
    (b"null", "holds a JSON null"),
    (b"{nope", "not valid JSON"),
    (b"\xff\xfe\x00\x81binary", "not UTF-8 text"),
    (b'{"seqlens": 5}', "field 'seqlens' must be a JSON object"),
    (b'{"seqlens": {"d_model": "64"}}', "field 'seqlens': ModelConfig.d_model: expected int"),
    (b'{"seqlens": {"norm_eps": 0}}', "field 'seqlens': ModelConfig.norm_eps"),
    (b'{"seqlens": {"wat": 1}}', "unknown fields"),
])
def test_config_file_errors_name_the_file_and_field(tmp_path, content, message):
    tiny("mamba").save(tmp_path)
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match="config.json") as info:
        seqlens.load(tmp_path)
    assert message in str(info.value)


def test_bad_recipe_and_metrics_records_name_the_field(tmp_path):
    tiny("mamba").save(tmp_path, extra={"metrics": [1]})
    with pytest.raises(CheckpointError, match="field 'metrics' must be a JSON object"):
        seqlens.load(tmp_path)
    tiny("mamba").save(tmp_path, extra={"recipe": {"name": "x", "model": {}, "data": "task:copy", "steps": "9"}})
    with pytest.raises(CheckpointError, match=r"field 'recipe': Recipe.steps: expected int"):
        seqlens.load(tmp_path)


# ----------------------------------------------------------------------------- 6: CLI promise


def _recipe_file(tmp_path: Path) -> str:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(tiny_recipe().to_dict()))
    return str(path)


RECIPE_BASE = {"name": "x", "model": {"arch": "lstm", "d_model": 16, "n_layers": 1, "vocab_size": 16,
                                     "pattern_heads": 4}, "data": "task:induction",
               "data_kwargs": {"seq_len": 12, "vocab_size": 16}, "steps": 1, "batch_size": 1, "eval_every": 1,
               "eval_batches": 1}
BAD_RECIPES = {
    "task.json": {"data": "task:nope"},
    "kwargs.json": {"data_kwargs": {"seq_len": 12}},
    "vocab.json": {"model": {**RECIPE_BASE["model"], "vocab_size": 4}},
    "betas.json": {"betas": [0.9]},
}

CLI_CASES = {
    "hooks-seq-len": (["hooks", "tiny-mamba", "--seq-len", "2000000000"], "--seq-len"),
    "hooks-batch": (["hooks", "tiny-mamba", "--batch", "100000000"], "--batch"),
    "hooks-pattern": (["hooks", "tiny-gpt2", "--seq-len", "8000"], "attention pattern"),
    "hooks-seed": (["hooks", "tiny-mamba", "--seed", "-1"], "--seed"),
    "hooks-bad-dir": (["hooks", "{tmp}/binary"], "not UTF-8"),
    "demo-tol": (["demo", "tiny-mamba", "--tol", "nan"], "--tol"),
    "demo-seq-len": (["demo", "tiny-mamba", "--seq-len", "100000"], "--seq-len"),
    "train-steps-0": (["train", "{recipe}", "--out", "{tmp}/o", "--steps", "0"], "--steps"),
    "train-out-file": (["train", "{recipe}", "--out", "{tmp}/file"], "is a file"),
    "train-out-under-file": (["train", "{recipe}", "--out", "{tmp}/file/x"], "not writable"),
    "train-out-foreign": (["train", "{recipe}", "--out", "{tmp}/binary"], "not empty"),
    "train-recipe-list": (["train", "{tmp}/list.json", "--out", "{tmp}/o"], "JSON array"),
    "train-recipe-binary": (["train", "{tmp}/binary/config.json", "--out", "{tmp}/o"], "not UTF-8"),
    "train-recipe-types": (["train", "{tmp}/types.json", "--out", "{tmp}/o"], "Recipe.steps"),
    "zoo-build-unknown": (["zoo", "build", "nope"], "unknown organism 'nope'"),
    "train-task-unknown": (["train", "{tmp}/task.json", "--out", "{tmp}/o"], "unknown task 'nope'"),
    "train-task-kwargs": (["train", "{tmp}/kwargs.json", "--out", "{tmp}/o"], "missing required argument"),
    "train-vocab-small": (["train", "{tmp}/vocab.json", "--out", "{tmp}/o"], "vocab_size: 4 is too small"),
    "train-betas": (["train", "{tmp}/betas.json", "--out", "{tmp}/o"], "Recipe.betas: expected tuple[float, float]"),
    "hooks-hf-model-type": (["hooks", "{tmp}/hf"], "'model_type' must be a string"),
    "zoo-build-out-file": (["zoo", "build", "induction-attn2", "--out", "{tmp}/file"], "is a file"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_one_line_exit_2(capsys, tmp_path, case):
    argv, expected = CLI_CASES[case]
    (tmp_path / "file").write_text("x")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "types.json").write_text(json.dumps({**tiny_recipe().to_dict(), "steps": "10"}))
    for name, change in BAD_RECIPES.items():
        (tmp_path / name).write_text(json.dumps({**RECIPE_BASE, **change}))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": ["gpt2"]}))
    argv = [a.format(tmp=tmp_path, recipe=_recipe_file(tmp_path)) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line or "Traceback" in line]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err and expected in lines[0], err
    assert not (tmp_path / "o").exists()  # nothing was trained or written


def test_cli_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "seqlens", "train", "induction-attn2", "--out",
                           str(tmp_path / "file"), "--steps", "1"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- 9: states


def test_state_from_another_model_is_refused():
    model = tiny("mamba", n_layers=2)
    x = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="state: has 4 layers but this model has 2"):
        model.step(x, tiny("mamba", n_layers=4).init_state(1))
    with pytest.raises(ValueError, match=r"state: layer 0 has entries \['S'\] .* expects \['conv', 'ssm'\]"):
        model.step(x, tiny("gla", n_layers=2).init_state(1))
    wider = build(ModelConfig(arch="mamba", vocab_size=V, d_model=32, n_layers=2, pattern_heads=2))
    with pytest.raises(ValueError, match="state: layer 0 entry 'conv' has shape"):
        model.stream(toks(1, 4), state=wider.init_state(1))
    attn = tiny("transformer", n_layers=2)
    with pytest.raises(ValueError, match="state: layer 0 entry 'k' has shape"):
        attn.step(x, tiny("transformer", n_layers=2, d_head=4).init_state(1))
    grown = attn.stream(toks(1, 5)).state  # a KV cache that grew with pos is this model's
    assert attn.step(x, grown)[1].pos == 6
    with pytest.raises(ValueError, match="state: pos"):
        model.step(x, ModelState(model.init_state(1).layers, pos=-1))
    for layers in ([["not", "a dict"], {}], [{"conv": 1, "ssm": 2}, {}]):
        with pytest.raises(ValueError, match="state: layer 0"):
            model.step(x, ModelState(layers))


# ----------------------------------------------------------------------------- 10: empty input, taps


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_input_is_one_clear_error_on_every_arch(arch):
    model = tiny(arch)
    empty = torch.zeros(2, 0, dtype=torch.long)
    for call in (lambda: model(empty), lambda: model.forward_chunk(empty, model.init_state(2)),
                 lambda: model.stream(empty), lambda: model(torch.zeros(0, 3, dtype=torch.long))):
        with pytest.raises(ValueError, match="tokens.*expected at least one token"):
            call()


def test_tap_positions_must_be_integers():
    model = tiny("mamba")
    for bad in ([2.7], [2.0], [True], torch.tensor([1.5])):
        with pytest.raises(TypeError, match="positions: expected integer positions"):
            with model.tap_states(bad):
                pass


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "gla", "mingru", "lstm"])
def test_tap_past_the_end_of_a_stream_is_reported(arch):
    model = tiny(arch)
    with pytest.raises(ValueError, match=r"positions: tap positions \[50\] lie outside the input run .*\[0, 4\), \[4, 8\), \[8, 10\)"):
        with model.tap_states([3, 50]):
            model.stream(toks(1, 10), chunk_size=4)
    # taps reached by a later stream call that continues the state are fine
    fired = []
    with model.tap_states([3, 15]):
        with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_state", lambda t, hook: fired.append(t.shape[1]))]):
            first = model.stream(toks(1, 10), chunk_size=4)
            model.stream(toks(1, 10), chunk_size=4, state=first.state)
    assert sum(fired) == 2
    # a tap before the position a continued state starts at never fires either
    state = model.stream(toks(1, 10)).state
    with pytest.raises(ValueError, match=r"tap positions \[2\] lie outside the input run .*\[10, 14\)"):
        with model.tap_states([2, 12]):
            model.stream(toks(1, 4), state=state)


def test_stream_callback_must_be_callable():
    with pytest.raises(TypeError, match="callback: expected a callable"):
        tiny("mamba").stream(toks(1, 4), callback=5)


@pytest.mark.parametrize("call", ["stream-chunk", "init-state-float", "init-state-bool"])
def test_sizes_must_be_integers(call):
    model = tiny("mamba")
    with pytest.raises(ValueError, match="chunk_size|batch"):
        {"stream-chunk": lambda: model.stream(toks(1, 4), chunk_size=2.5),
         "init-state-float": lambda: model.init_state(2.5),
         "init-state-bool": lambda: model.init_state(True)}[call]()


def test_layer_true_is_not_an_int():
    model = tiny("transformer", n_layers=2)
    with pytest.raises(ValueError, match="layer: expected an integer"):
        model.mixer_pattern(toks(1, 4), True)


@pytest.mark.parametrize("reference", [torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long)])
def test_mean_ablation_with_empty_reference(reference):
    from seqlens.circuits import ablate_heads

    with pytest.raises(ValueError, match="reference: expected at least one token"):
        with ablate_heads(tiny("transformer"), [(0, 0)], mode="mean", reference=reference):
            pass


@pytest.mark.parametrize("measure", ["prefix", "mul", "abs"])
def test_induction_scores_on_one_token(measure):
    from seqlens.circuits import induction_scores

    with pytest.raises(ValueError, match="tokens: induction scores need sequences of at least 2 tokens"):
        induction_scores(tiny("transformer"), tokens=toks(3, 1), measure=measure)
