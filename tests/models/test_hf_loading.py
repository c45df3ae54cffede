"""Loading Hugging Face checkpoints (issue 19): half precision (``dtype=``), ``device=``, and
sharded checkpoints streamed tensor by tensor into the model (no second full copy).
``scripts/hf_load_memory.py`` measures the peak memory this buys; here the order of reads and
copies is the checked invariant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import seqlens  # noqa: E402
from seqlens.circuits.token_heads import induction_scores  # noqa: E402
from seqlens.models import hf_read  # noqa: E402
from seqlens.models.hf import from_hf  # noqa: E402

V, LAYERS = 101, 4


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A 4-layer Gemma 2 (the family with the most pieces) saved in several shards."""
    torch.manual_seed(0)
    hf = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        vocab_size=V, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=48, sliding_window=4, query_pre_attn_scalar=8, initializer_range=0.2,
        attn_logit_softcapping=3.0, final_logit_softcapping=10.0)).eval()
    directory = tmp_path_factory.mktemp("gemma2_sharded")
    hf.save_pretrained(directory, max_shard_size="30KB")
    assert len(list(directory.glob("model-*.safetensors"))) > 2
    return hf, directory


def toks(length: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (2, length), generator=torch.Generator().manual_seed(1))


def test_sharded_stream_matches_transformers(sharded) -> None:
    hf, directory = sharded
    with torch.no_grad():
        assert (from_hf(directory)(toks()) - hf(toks(), use_cache=False).logits).abs().max().item() < 1e-4


def test_tensors_are_read_as_the_layers_are_copied(sharded, monkeypatch) -> None:
    """Each layer's tensors are read only after the previous layer was copied into the model, and
    each copied piece is one layer (or one top-level tensor): never the whole checkpoint."""
    events: list[tuple[str, str]] = []
    read, copy = hf_read.SafetensorsSource.read, hf_read.StreamingCopy.copy

    def spy_read(self, name: str) -> torch.Tensor:
        events.append(("read", name))
        return read(self, name)

    def spy_copy(self, part: dict) -> None:
        events.append(("copy", ",".join(sorted(part))))
        copy(self, part)

    monkeypatch.setattr(hf_read.SafetensorsSource, "read", spy_read)
    monkeypatch.setattr(hf_read.StreamingCopy, "copy", spy_copy)
    from_hf(sharded[1])
    copies = [i for i, (kind, _) in enumerate(events) if kind == "copy"]
    assert len(copies) == 3 + LAYERS  # embedding, final norm, head (tied: nothing), one per layer
    for layer in range(1, LAYERS):
        first_read = next(i for i, (k, n) in enumerate(events) if k == "read" and f"layers.{layer}." in n)
        copied_before = next(i for i, (k, n) in enumerate(events) if k == "copy" and f"blocks.{layer - 1}." in n)
        assert copied_before < first_read
    assert all(len({n.split(".")[1] for n in names.split(",") if n.startswith("blocks.")}) <= 1
               for kind, names in events if kind == "copy")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(sharded, dtype: torch.dtype) -> None:
    _, directory = sharded
    full, half = from_hf(directory), seqlens.load(str(directory), dtype=dtype)
    assert {p.dtype for p in half.parameters()} == {dtype}
    with torch.no_grad():
        want, got = full(toks()), half(toks())
    assert got.dtype == dtype
    assert (got.float() - want).abs().max().item() < 0.05 * want.abs().max().item()
    # the analyses keep their own numerics in float32: patterns are float32 distributions
    pattern = half.mixer_pattern(toks(), 0)
    assert pattern.dtype == torch.float32
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
    scores_half = induction_scores(half, seq_len=16, batch=2).scores
    scores_full = induction_scores(full, seq_len=16, batch=2).scores
    assert (scores_half - scores_full).abs().max().item() < 0.02


def test_device_argument(sharded) -> None:
    _, directory = sharded
    model = from_hf(directory, device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.unembed.weight is model.embed.weight  # still tied after to_empty on the device
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' was asked for but CUDA is not available"):
            from_hf(directory, device="cuda")
    with pytest.raises(ValueError, match="device: 'gpu0' is not a torch device"):
        from_hf(directory, device="gpu0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16(sharded) -> None:
    hf, directory = sharded
    model = from_hf(directory, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        got = model(toks().cuda()).float().cpu()
        want = hf(toks(), use_cache=False).logits
    assert (got - want).abs().max().item() < 0.05 * want.abs().max().item()
    stats = model.attention_stats(toks().cuda(), 0)  # a sliding, soft-capped layer
    torch.testing.assert_close(stats.max_prob.float(), model.mixer_pattern(toks().cuda(), 0).amax(-1),
                               atol=2e-2, rtol=2e-2)
