"""Distributed harvesting and SAE training on CPU (gloo): 2 processes give what 1 process gives.

Ground truth is the single-process run: the 2-process store must hold exactly its rows in the same
order, 2-process training from the same seed and global batch its weights (within float
tolerance). A rank killed mid-write must fail the run and leave no shard counted as complete; the
rerun completes the store without duplicating or losing rows.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import seqlens
from seqlens.probes import sae as S
from seqlens.probes.sae import store as store_mod

import dist_helpers
from sae_helpers import sparse_data

HOOK = "blocks.0.hook_resid_post"


def tiny_model():
    return seqlens.build(seqlens.ModelConfig(arch="mamba", d_model=16, n_layers=2, vocab_size=256), seed=0).eval()


# ----------------------------------------------------------------------------- in-process: resume


def test_an_interrupted_harvest_resumes_without_duplicates_or_losses(tmp_path, monkeypatch):
    model = tiny_model()
    tokens = torch.randint(0, 256, (9, 10), generator=torch.Generator().manual_seed(1))
    ref = S.harvest(model, HOOK, tokens, progress=False)
    real_write, written = store_mod._write_shard, []

    def dies_on_shard_2(directory, i, *args):
        if i == 2:
            (directory / ".shard_00002.safetensors.x.tmp").write_bytes(b"half a shard")  # as a kill leaves it
            raise KeyboardInterrupt
        written.append(i)
        real_write(directory, i, *args)

    monkeypatch.setattr(store_mod, "_write_shard", dies_on_shard_2)
    with pytest.raises(KeyboardInterrupt):
        S.harvest(model, HOOK, tokens, out=tmp_path / "st", shard_size=25, batch_size=4, progress=False)
    assert not (tmp_path / "st" / "index.json").exists() and written == [0, 1]
    with pytest.raises(FileNotFoundError, match="did not finish"):
        S.ActivationStore.open(tmp_path / "st")
    with pytest.raises(ValueError, match="other settings.*shard_size"):  # a rerun must be the same run
        S.harvest(model, HOOK, tokens, out=tmp_path / "st", shard_size=20, progress=False)
    with pytest.raises(ValueError, match="other settings.*tokens_sha256"):
        S.harvest(model, HOOK, tokens.flip(0), out=tmp_path / "st", shard_size=25, progress=False)
    monkeypatch.setattr(store_mod, "_write_shard", lambda d, i, *a: (written.append(i), real_write(d, i, *a)))
    disk = S.harvest(model, HOOK, tokens, out=tmp_path / "st", shard_size=25, batch_size=4, progress=False)
    assert written == [0, 1, 2, 3]  # only the missing shards were computed
    assert disk.shard_rows == [25, 25, 25, 15]
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["index.json"] + [
        f"shard_{i:05d}.safetensors" for i in range(4)]  # the plan and the dead writer's file are gone
    assert torch.equal(disk.to_tensor(), ref.to_tensor()) and torch.equal(disk.locations(), ref.locations())
    assert disk.scaling_factor == pytest.approx(ref.scaling_factor, rel=1e-6)


# ----------------------------------------------------------------------------- 2 processes: training


@pytest.mark.slow
def test_two_process_training_equals_one_process_training(tmp_path):
    """Every architecture (AuxK, BatchTopK's global cut, JumpReLU, MP, both standard variants)."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    X, _ = sparse_data(n=256, d=8, m=12, k=2, seed=4)
    one = dist_helpers.train_all(X)
    mp.spawn(dist_helpers.worker, args=(2, str(tmp_path / "init"), X, str(tmp_path / "two.safetensors")),
             nprocs=2, join=True)
    two = load_file(tmp_path / "two.safetensors")
    assert sorted(two) == sorted(one)
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert one["topk.dead"].max() > 0  # AuxK ran (there were dead latents to reconstruct with)


# ----------------------------------------------------------------------------- torchrun: the CLI


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, env_extra=None, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "seqlens", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_harvest_and_sae_train_under_torchrun(tmp_path):
    model = tiny_model()
    model.save(tmp_path / "model")
    text = tmp_path / "data.txt"
    text.write_bytes(bytes(torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(2)).tolist()))
    harvest = ["harvest", str(tmp_path / "model"), "--hook", HOOK, "--data", str(text), "--seq-len", "16",
               "--max-tokens", "1600", "--shard-size", "150", "--batch-size", "4", "--out", str(tmp_path / "st"),
               "--quiet"]
    # rank 1 is SIGKILLed after writing shard 3's temporary file, before renaming it
    crashed = torchrun(harvest, {"SEQLENS_TEST_CRASH": "1:shard:3"})
    assert crashed.returncode != 0, crashed.stdout
    st = tmp_path / "st"
    assert not (st / "index.json").exists() and not (st / "shard_00003.safetensors").exists()
    rows = [150] * 10 + [100]
    for path in st.glob("shard_*.safetensors"):  # whatever is named a shard is a whole shard
        assert S.io.read_weights(path)["acts"].shape == (rows[int(path.stem[6:])], 16)
    done = torchrun(harvest)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["rows"] == 1600
    store = S.ActivationStore.open(st)
    tokens = torch.tensor(list(text.read_bytes()[:1600])).reshape(100, 16)
    ref = S.harvest(model, HOOK, tokens, progress=False)
    assert store.shard_rows == rows
    assert torch.equal(store.locations(), ref.locations())
    torch.testing.assert_close(store.to_tensor(), ref.to_tensor(), rtol=0, atol=1e-6)  # thread counts differ

    train = ["sae", "train", "--store", str(st), "--architecture", "topk", "--d-sae", "24", "--k", "3",
             "--steps", "15", "--batch-size", "64", "--seed", "1", "--out", str(tmp_path / "sae"), "--quiet"]
    done = torchrun(train)
    assert done.returncode == 0, done.stderr[-2000:]
    two = S.load(tmp_path / "sae")
    one = S.train_sae(store, architecture="topk", d_sae=24, k=3, steps=15, batch_size=64, seed=1, progress=False,
                      device="cpu")
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- the CLI in one process


def test_cli_harvest_reads_npy_and_text_and_reports_bad_input(tmp_path, capsys):
    import numpy as np

    from seqlens.cli import main

    model = tiny_model()
    model.save(tmp_path / "model")
    ids = torch.randint(0, 256, (700,), generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "ids.npy", ids.numpy().astype(np.uint16))  # converted, not refused
    (tmp_path / "ids.txt").write_bytes(bytes(ids.tolist()))
    args = ["harvest", str(tmp_path / "model"), "--hook", HOOK, "--seq-len", "20", "--max-tokens", "610",
            "--positions", "0,19", "--quiet"]
    for name in ("ids.npy", "ids.txt"):
        assert main([*args, "--data", str(tmp_path / name), "--out", str(tmp_path / name[-3:])]) == 0
        store = S.ActivationStore.open(tmp_path / name[-3:])
        ref = S.harvest(model, HOOK, ids[:600].reshape(30, 20), positions=[0, 19], progress=False)
        assert torch.equal(store.locations(), ref.locations())
        torch.testing.assert_close(store.to_tensor(), ref.to_tensor(), rtol=0, atol=1e-6)
    capsys.readouterr()
    assert main([*args, "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["sae", "train", "--store", str(tmp_path / "npy"), "--d-sae", "8", "--k", "2", "--steps", "2",
                 "--batch-size", "7", "--out", str(tmp_path / "sae"), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2 and S.load(tmp_path / "sae").cfg.d_sae == 8
