"""SAELens 6 format: fixtures written exactly as SAELens 6.54 writes them (cfg.json text copied from
its ``save_model`` / ``save_inference_model``; tensors named and shaped as its state dicts) load
here with SAELens' codes, and our directories have the same layout."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_helpers import random_sae
from seqlens.probes import sae as S

META = ('"metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12", '
        '"model_name": "tiny", "hook_name": "blocks.0.hook_resid_post"}')
BASE = ('"d_in": 12, "d_sae": 40, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": true, '
        '"normalize_activations": "none", "reshape_activations": "none", ')
# cfg.json as SAELens 6.54.12 wrote it for each architecture (SAE.save_model; BatchTopK through
# BatchTopKTrainingSAE.save_inference_model, which saves a JumpReLU SAE)
SAELENS_CFG = {
    "standard": "{" + BASE + META + ', "architecture": "standard"}',
    "topk": "{" + BASE + META + ', "k": 5, "rescale_acts_by_decoder_norm": false, "architecture": "topk"}',
    "jumprelu": "{" + BASE + META + ', "architecture": "jumprelu"}',
    "matching_pursuit": "{" + BASE + META + ', "residual_threshold": 0.0, "max_iterations": 6, '
                        '"stop_on_duplicate_support": false, "architecture": "matching_pursuit"}',
    "batchtopk": '{"reshape_activations": "none", "dtype": "float32", "normalize_activations": "none", "d_sae": 40, '
                 '"metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12", '
                 '"training_architecture": "batchtopk", "training_architecture_details": {"decoder_init_norm": 0.1, '
                 '"k": 4, "use_sparse_activations": false, "aux_loss_coefficient": 1.0, '
                 '"rescale_acts_by_decoder_norm": true, "topk_threshold_lr": 0.01}, "model_name": "tiny", '
                 '"hook_name": "blocks.0.hook_resid_post"}, "d_in": 12, "device": "cpu", "apply_b_dec_to_input": true, '
                 '"architecture": "jumprelu"}',
}
# the tensors in SAELens' sae_weights.safetensors (MP is tied: no W_enc, and has no b_enc)
SAELENS_TENSORS = {
    "standard": {"W_enc": [12, 40], "W_dec": [40, 12], "b_enc": [40], "b_dec": [12]},
    "topk": {"W_enc": [12, 40], "W_dec": [40, 12], "b_enc": [40], "b_dec": [12]},
    "jumprelu": {"W_enc": [12, 40], "W_dec": [40, 12], "b_enc": [40], "b_dec": [12], "threshold": [40]},
    "batchtopk": {"W_enc": [12, 40], "W_dec": [40, 12], "b_enc": [40], "b_dec": [12], "threshold": [40]},
    "matching_pursuit": {"W_dec": [40, 12], "b_dec": [12]},
}
X = torch.randn(16, 12, generator=torch.Generator().manual_seed(5)) * 2


def _write_saelens_dir(path, arch, seed=0):
    """A directory as SAELens writes it, with seeded random tensors; returns the tensors."""
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(shape, generator=g) * 0.3 for k, shape in SAELENS_TENSORS[arch].items()}
    if "threshold" in tensors:
        tensors["threshold"] = tensors["threshold"].abs()
    if arch == "matching_pursuit":
        tensors["W_dec"] = tensors["W_dec"] / tensors["W_dec"].norm(dim=-1, keepdim=True)
    path.mkdir()
    save_file(tensors, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(SAELENS_CFG[arch])
    return tensors


@pytest.mark.parametrize("arch", list(SAELENS_CFG))
def test_saelens_directories_load_with_saelens_codes(tmp_path, arch):
    t = _write_saelens_dir(tmp_path / arch, arch)
    s = S.load(tmp_path / arch)
    assert s.architecture == ("jumprelu" if arch == "batchtopk" else arch)
    assert s.cfg.metadata["hook_name"] == "blocks.0.hook_resid_post"
    sae_in = X - t["b_dec"]
    if arch == "matching_pursuit":  # SAELens' loop, written out: 6 steps, no early stop
        r, want = sae_in.clone(), torch.zeros(16, 40)
        for _ in range(6):
            c = torch.relu(r @ t["W_dec"].T)
            j = c.argmax(-1)
            v = c.gather(1, j[:, None])
            want.scatter_add_(1, j[:, None], v)
            r = r - v * t["W_dec"][j]
    else:
        z = sae_in @ t["W_enc"] + t["b_enc"]
        if arch == "topk":
            top = torch.topk(z, 5, dim=-1)
            want = torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
        elif arch in ("jumprelu", "batchtopk"):
            want = torch.relu(z) * (z > t["threshold"].relu())
        else:
            want = torch.relu(z)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(X), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s(X), want @ t["W_dec"] + t["b_dec"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", S.ARCHITECTURES)
def test_saved_directory_has_saelens_layout_and_round_trips(tmp_path, arch):
    s = random_sae(arch, metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "m"})
    s.save(tmp_path / "x")
    cfg = json.loads((tmp_path / "x" / "cfg.json").read_text())
    theirs = json.loads(SAELENS_CFG[arch])
    assert set(cfg) == set(theirs)  # exactly SAELens' keys for this architecture
    assert {k: cfg[k] for k in ("architecture", "d_in", "d_sae", "dtype", "device")} == \
           {"architecture": arch, "d_in": 12, "d_sae": 40, "dtype": "float32", "device": "cpu"}
    tensors = load_file(str(tmp_path / "x" / "sae_weights.safetensors"))
    assert {k: list(v.shape) for k, v in tensors.items()} == SAELENS_TENSORS[arch]
    back = S.load(tmp_path / "x")
    assert type(back) is type(s)
    assert back.cfg.metadata.pop("sae_lens_version") == "6.54.12" and back.cfg == s.cfg
    with torch.no_grad():
        torch.testing.assert_close(back.encode(X), s.encode(X))
        torch.testing.assert_close(back(X), s(X))


def test_load_errors_are_clear_and_nothing_is_unpickled(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a directory nor a shipped SAE"):
        S.load(tmp_path / "nope")
    d = tmp_path / "d"
    _write_saelens_dir(d, "topk")
    (d / "cfg.json").write_text(SAELENS_CFG["topk"].replace('"topk"', '"gated"'))
    with pytest.raises(ValueError, match="unknown architecture 'gated'"):
        S.load(d)
    (d / "cfg.json").write_text(SAELENS_CFG["topk"].replace('"d_sae": 40', '"d_sae": 41'))
    with pytest.raises(ValueError, match=r"W_enc has shape \[12, 40\], expected \[12, 41\]"):
        S.load(d)
    (d / "cfg.json").write_text(SAELENS_CFG["jumprelu"])
    with pytest.raises(ValueError, match=r"missing tensors \['threshold'\]"):
        S.load(d)
    (d / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        S.load(d)
    (d / "cfg.json").write_text(SAELENS_CFG["topk"])
    import pickle
    (d / "sae_weights.safetensors").write_bytes(pickle.dumps({"W_enc": torch.zeros(12, 40)}))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        S.load(d)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        S.load(d)


def test_saved_metadata_marks_the_saelens_6_format(tmp_path):
    """SAELens reads a cfg without metadata.sae_lens_version as pre-6.0 and would drop hook_name."""
    random_sae("standard", metadata={"hook_name": "blocks.1.hook_resid_post"}).save(tmp_path / "x")
    meta = json.loads((tmp_path / "x" / "cfg.json").read_text())["metadata"]
    assert int(meta["sae_lens_version"].split(".")[0]) >= 6 and meta["hook_name"] == "blocks.1.hook_resid_post"


def test_pre_6_configs_load_as_saelens_converts_them(tmp_path):
    """A SAELens 5 TopK SAE: architecture 'standard' with activation_fn_str 'topk', hook_point at the top."""
    t = _write_saelens_dir(tmp_path / "old", "topk")
    old = {"architecture": "standard", "d_in": 12, "d_sae": 40, "dtype": "float32", "device": "cpu",
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}, "hook_point": "blocks.3.hook_resid_pre",
           "model_name": "gpt2", "normalize_activations": False, "apply_b_dec_to_input": True,
           "sae_lens_training_version": "3.5.0"}
    (tmp_path / "old" / "cfg.json").write_text(json.dumps(old))
    s = S.load(tmp_path / "old")
    assert s.architecture == "topk" and s.cfg.k == 5 and s.cfg.normalize_activations == "none"
    assert s.cfg.metadata["hook_name"] == "blocks.3.hook_resid_pre" and s.cfg.metadata["model_name"] == "gpt2"
    z = (X - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    top = torch.topk(z, 5, dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(s.encode(X), torch.zeros_like(z).scatter(-1, top.indices, top.values.relu()))


def test_dtype_override_and_shipped_listing(tmp_path):
    _write_saelens_dir(tmp_path / "s", "standard")
    s = S.load(tmp_path / "s", dtype="float64")
    assert s.W_enc.dtype == torch.float64 and s.cfg.dtype == "float64"
    assert isinstance(S.list_shipped(), list)
