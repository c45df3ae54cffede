"""ModelConfig: shared fields + a per-mixer sub-config, with the flat layout still accepted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from seqlens.models import zoo
from seqlens.models.config import (ARCHS, MIXER_CONFIGS, AttentionConfig, LinearAttentionConfig, MambaConfig,
                                   ModelConfig, RecurrentConfig)
from seqlens.models.registry import build


def test_every_arch_has_a_sub_config_with_groups():
    assert set(MIXER_CONFIGS) == set(ARCHS)
    for arch in ARCHS:
        cfg = ModelConfig(arch=arch, d_model=32)
        assert isinstance(cfg.mixer, MIXER_CONFIGS[arch])
        assert cfg.n_groups == cfg.mixer.n_groups == build(cfg).n_groups


def test_flat_kwargs_split_into_the_sub_config():
    cfg = ModelConfig(arch="mamba", d_model=32, d_state=8, pattern_heads=4, d_mlp=48)
    assert cfg.mixer == MambaConfig(d_state=8, n_groups=4)
    assert (cfg.d_state, cfg.pattern_heads, cfg.n_groups, cfg.d_inner, cfg.d_mlp) == (8, 4, 4, 64, 48)
    assert cfg == ModelConfig(arch="mamba", d_model=32, d_mlp=48, mixer=MambaConfig(d_state=8, n_groups=4))
    assert ModelConfig(arch="gla", n_heads=2).mixer == LinearAttentionConfig(n_heads=2)
    assert ModelConfig(arch="lstm", d_hidden=16, n_groups=2).mixer == RecurrentConfig(d_hidden=16, n_groups=2)


def test_replace_takes_flat_and_shared_changes():
    cfg = ModelConfig(arch="transformer", n_heads=2, d_model=32)
    assert cfg.replace(n_heads=8).mixer == AttentionConfig(n_heads=8)
    assert dataclasses.replace(cfg, d_model=64).d_model == 64
    assert dataclasses.replace(cfg, d_model=64).mixer == cfg.mixer
    # switching arch keeps the fields both sub-configs have (n_heads)
    assert cfg.replace(arch="gla").mixer == LinearAttentionConfig(n_heads=2)


def test_fields_of_another_mixer_are_not_readable():
    with pytest.raises(AttributeError, match="d_state.*'transformer'.*AttentionConfig"):
        ModelConfig().d_state
    with pytest.raises(AttributeError, match="n_heads"):
        ModelConfig(arch="mamba").n_heads


def test_nested_json_round_trip_and_errors():
    cfg = ModelConfig(arch="gla", d_model=32, n_heads=2, d_key=16, gate_low_rank=4)
    data = json.loads(cfg.to_json())
    assert data["mixer"] == {"n_heads": 2, "d_key": 16, "d_value": None, "gate_low_rank": 4,
                             "gate_normalizer": 16.0}
    assert "n_heads" not in data and ModelConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match=r"unknown fields \['mixer.d_state'\]"):
        ModelConfig.from_dict({**data, "mixer": {**data["mixer"], "d_state": 4}})
    with pytest.raises(TypeError, match="ModelConfig.mixer: expected a JSON object"):
        ModelConfig.from_dict({**data, "mixer": [1]})
    with pytest.raises(ValueError, match="unknown fields \\['nope'\\]"):
        ModelConfig.from_dict({**data, "nope": 1})
    with pytest.raises(ValueError, match="LinearAttentionConfig.n_heads: 3 must divide"):
        ModelConfig.from_dict({**data, "mixer": {**data["mixer"], "n_heads": 3}})


FLAT_MAMBA = {  # a config.json in the layout before the split: every field of every mixer
    "arch": "mamba", "vocab_size": 64, "d_model": 32, "n_layers": 1, "n_ctx": 128, "norm": "rmsnorm",
    "norm_eps": 1e-5, "tied_embeddings": True, "n_heads": 4, "d_head": None, "n_kv_heads": None,
    "positions": "none", "rotary_dim": None, "rotary_base": 10000.0, "attn_bias": False, "attn_out_bias": False,
    "mlp": "plain", "d_mlp": None, "act": "gelu_new", "mlp_bias": False, "attn_only": False,
    "parallel_residual": False, "d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": None, "conv_bias": True,
    "proj_bias": False, "pattern_heads": 4, "d_key": None, "d_value": None, "gate_low_rank": 16,
    "gate_normalizer": 16.0, "d_hidden": None, "meta": {},
}


def test_flat_layout_loads():
    cfg = ModelConfig.from_dict(FLAT_MAMBA)
    assert cfg.mixer == MambaConfig(d_state=8, n_groups=4)
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_shipped_flat_zoo_configs_load():
    """The zoo's config.json files were written flat; each loads and builds its own mixer config."""
    root = Path(zoo.__file__).parent / "organisms"
    files = sorted(root.glob("*/config.json"))
    assert files
    for path in files:
        raw = json.loads(path.read_text())["seqlens"]
        cfg = ModelConfig.from_dict(raw)
        assert isinstance(cfg.mixer, MIXER_CONFIGS[raw["arch"]]), path
        if "mixer" not in raw:  # flat: the group count was n_heads for heads, pattern_heads for channels
            heads = MIXER_CONFIGS[raw["arch"]] in (AttentionConfig, LinearAttentionConfig)
            assert cfg.n_groups == raw["n_heads" if heads else "pattern_heads"], path


def test_every_mixer_summarises_its_own_config():
    """The model page and `seqlens info` show `mixer.summary()`: it must hold the arch's own
    sub-config fields (the Model page once asked a GLA for attention's kv_heads)."""
    from seqlens.testing.tiny import CONFIGS

    for name, cfg in CONFIGS.items():
        summary = build(cfg).mixers[0].summary()
        own = dataclasses.asdict(cfg.mixer)
        shared = set(summary) & set(own)
        assert summary and shared, name
        assert all(summary[k] == own[k] for k in shared if own[k] is not None), name
