"""Harvesting on every architecture (residual hooks and hook_state through tap_states), the
on-disk store against the in-memory one, and training from a store."""

import json

import pytest
import torch

import seqlens
from seqlens.models.config import ARCHS
from seqlens.probes import sae as S

RECURRENT = ("mamba", "gla", "retnet", "mingru", "minlstm", "lstm")


def tiny(arch):
    return seqlens.build(seqlens.ModelConfig(arch=arch, d_model=16, n_layers=2, vocab_size=64), seed=0).eval()


TOKENS = torch.randint(0, 64, (5, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_harvest_equals_run_with_cache_on_every_architecture(arch):
    model = tiny(arch)
    store = S.harvest(model, "blocks.1.hook_resid_post", TOKENS, batch_size=2, progress=False)
    _, cache = model.run_with_cache(TOKENS)
    want = cache["blocks.1.hook_resid_post"].reshape(-1, 16)
    torch.testing.assert_close(store.to_tensor(), want)
    assert store.locations().tolist() == [[b, p] for b in range(5) for p in range(12)]
    store = S.harvest(model, "blocks.0.hook_resid_pre", TOKENS, positions=[3, -1], progress=False)
    torch.testing.assert_close(store.to_tensor(), cache["blocks.0.hook_resid_pre"][:, [3, 11]].reshape(-1, 16))
    assert store.info["positions"] == [3, 11]


@pytest.mark.parametrize("arch", [a for a in ARCHS if a in RECURRENT])
def test_harvest_of_hook_state_flattens_the_tapped_states(arch):
    model = tiny(arch)
    hook = "blocks.0.mixer.hook_state"
    store = S.harvest(model, hook, TOKENS, positions=[4, 11], batch_size=3, progress=False)
    with model.tap_states([4, 11]):
        _, cache = model.run_with_cache(TOKENS)
    state = cache[hook]  # [B, T, ...]
    assert store.info["vector_shape"] == list(state.shape[2:])
    torch.testing.assert_close(store.to_tensor(), state.reshape(5 * 2, -1))
    assert store.d_in == state[0, 0].numel()
    from seqlens.models.hooks import attached_hooks
    assert attached_hooks(model) == []  # the early stop left no hook or tap behind


def test_hook_state_on_attention_and_bad_hooks_are_clear_errors():
    model = tiny("transformer")
    with pytest.raises(ValueError, match="not a hook of this model"):
        S.harvest(model, "blocks.0.mixer.hook_state", TOKENS, progress=False)
    with pytest.raises(ValueError, match="not a hook of this model"):
        S.harvest(model, "blocks.9.hook_resid_post", TOKENS, progress=False)
    with pytest.raises(ValueError, match="positions"):
        S.harvest(model, "blocks.0.hook_resid_post", TOKENS, positions=[12], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        S.harvest(model, "blocks.0.hook_resid_post", TOKENS, batch_size=0, progress=False)


def test_on_disk_store_equals_the_in_memory_store(tmp_path):
    model = tiny("mamba")
    mem = S.harvest(model, "blocks.0.mixer.hook_state", TOKENS, positions=[2, 7, 11], progress=False)
    disk = S.harvest(model, "blocks.0.mixer.hook_state", TOKENS, positions=[2, 7, 11], out=tmp_path / "st",
                     shard_size=4, progress=False)
    assert disk.n_shards == 4 and disk.shard_rows == [4, 4, 4, 3]
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == [
        "index.json", "shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors",
        "shard_00003.safetensors"]  # no temporary files left behind
    again = S.ActivationStore.open(tmp_path / "st")
    for store in (disk, again):
        assert torch.equal(store.to_tensor(), mem.to_tensor())
        assert torch.equal(store.locations(), mem.locations())
        assert store.scaling_factor == pytest.approx(mem.scaling_factor)
    idx = torch.tensor([14, 0, 5, 9])
    assert torch.equal(again.rows(idx), mem.to_tensor()[idx])
    index = json.loads((tmp_path / "st" / "index.json").read_text())
    assert index["hook_name"] == "blocks.0.mixer.hook_state" and index["positions"] == [2, 7, 11]
    with pytest.raises(FileExistsError):
        S.harvest(model, "blocks.0.hook_resid_post", TOKENS, out=tmp_path / "st", progress=False)
    # training streams the same batches from one on-disk shard as from the tensor
    one = S.harvest(model, "blocks.0.mixer.hook_state", TOKENS, positions=[2, 7, 11], out=tmp_path / "one",
                    progress=False)
    kw = dict(architecture="topk", d_sae=8, k=2, steps=5, batch_size=4, progress=False)
    a, b = S.train_sae(one, **kw), S.train_sae(mem.to_tensor(), **kw)
    assert torch.equal(a.W_dec, b.W_dec)
    assert a.cfg.metadata["hook_name"] == "blocks.0.mixer.hook_state"


def test_open_rejects_broken_stores(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        S.ActivationStore.open(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "seqlens-activation-store/1", "d_in": 4,
                                                     "shards": ["../x.safetensors"], "shard_rows": [3]}))
    with pytest.raises(ValueError, match="missing or not a plain file name"):
        S.ActivationStore.open(tmp_path)
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(ValueError, match="format"):
        S.ActivationStore.open(tmp_path)


def test_per_head_hooks_flatten_and_pattern_hooks_are_refused():
    model = tiny("transformer")
    store = S.harvest(model, "blocks.0.mixer.hook_z", TOKENS, positions=[0, 5], progress=False)
    _, cache = model.run_with_cache(TOKENS)
    z = cache["blocks.0.mixer.hook_z"]  # [B, L, H, d_head]
    assert store.info["vector_shape"] == list(z.shape[2:])
    torch.testing.assert_close(store.to_tensor(), z[:, [0, 5]].reshape(10, -1))  # heads concatenated, as hook_z SAEs
    with pytest.raises(ValueError, match="expected \\[batch=5, seq_len=12"):
        S.harvest(model, "blocks.0.mixer.hook_pattern", TOKENS, progress=False)
