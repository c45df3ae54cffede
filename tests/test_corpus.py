"""Standard-library corpus (seqlens.corpus): file selection, split, tokenizer, windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqlens import corpus as C


@pytest.fixture(scope="module")
def stdlib() -> C.StdlibCorpus:
    return C.StdlibCorpus()


def test_files_exclude_tests_site_packages_and_generated(stdlib):
    files = stdlib.files()
    assert len(files) > 500 and files == sorted(files)
    assert all(f.endswith(".py") for f in files)
    for path in files:
        assert not set(path.split("/")[:-1]) & C.EXCLUDED_DIRS, path
        assert not path.startswith(("lib2to3/tests/", "idlelib/idle_test/", "test/")), path
    assert "pydoc_data/topics.py" not in files
    assert not any(Path(f).name.startswith("_sysconfigdata") for f in files)
    assert {"os.py", "json/decoder.py", "idlelib/editor.py", "lib2to3/refactor.py"} <= set(files)


def test_split_is_by_file_disjoint_and_deterministic(stdlib):
    train, val = stdlib.files("train"), stdlib.files("val")
    assert not set(train) & set(val) and sorted(train + val) == stdlib.files()
    assert 0.02 < len(val) / len(stdlib.files()) < 0.1
    assert C.StdlibCorpus().files("val") == val
    assert all(C.file_split(f) == "val" for f in val)
    assert C.file_split("os.py") == C.file_split("os.py")
    assert {C.file_split(f, val_fraction=0.0) for f in val} == {"train"}


def test_text_joins_split_files_with_nul(stdlib):
    val = stdlib.files("val")
    text = stdlib.text("val")
    assert text.count(b"\0") == len(val)
    first = (Path(stdlib.root) / val[0]).read_bytes()
    assert text.startswith(first + b"\0")
    stats = C.corpus_stats()
    assert stats["files_val"] == len(val) and stats["bytes_val"] == len(text) - len(val)
    assert stats["files"] == len(stdlib.files()) and stats["bytes"] > 5_000_000
    assert C.stdlib_corpus("val", max_bytes=100) == text[:100]
    assert stdlib.text("val") is text, "cached"


def test_byte_tokenizer_round_trip():
    tok = C.ByteTokenizer()
    text = "def f(x):\n    return 'héllo ∑ 🐍'\n"
    ids = tok.encode(text)
    assert len(tok) == 256 and all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text and tok.decode(torch.tensor(ids)) == text
    raw = bytes(range(256))
    assert tok.decode_bytes(tok.encode(raw)) == raw
    assert tok.decode(tok.encode(raw)[128:130]) == "\ufffd\ufffd"
    with pytest.raises(ValueError, match="ids"):
        tok.decode([300])
    with pytest.raises(TypeError, match="text"):
        tok.encode(3)


def test_batches_are_seeded_windows_of_the_split(stdlib):
    one = list(stdlib.batches(4, 32, seed=1, split="val", steps=3))
    two = list(stdlib.batches(4, 32, seed=1, split="val", steps=3))
    other = next(stdlib.batches(4, 32, seed=2, split="val"))
    assert len(one) == 3 and all(torch.equal(a, b) for a, b in zip(one, two))
    assert not torch.equal(one[0], other)
    w = one[0]
    assert w.shape == (4, 33) and w.dtype == torch.long and 0 <= w.min() and w.max() < 256
    text = stdlib.text("val")
    assert all(bytes(row.tolist()) in text for row in w)
    assert bytes(next(stdlib.batches(1, 16, seed=1))[0].tolist()) in stdlib.text("train")


def test_eval_windows_are_fixed_and_cover_the_split(stdlib):
    w = stdlib.eval_windows(256)
    n = len(stdlib.text("val"))
    assert w.shape == ((n - 257) // 256 + 1, 257) and torch.equal(w, stdlib.eval_windows(256))
    assert torch.equal(w[0, -1], w[1, 0]), "consecutive windows share one byte"
    assert bytes(w[:3, :-1].flatten().tolist()) == stdlib.text("val")[: 3 * 256]
    few = stdlib.eval_windows(256, max_windows=5)
    assert few.shape == (5, 257) and torch.equal(few[0], w[0]) and torch.equal(few[-1], w[-1])


def test_bad_arguments_name_themselves(stdlib):
    with pytest.raises(ValueError, match="split"):
        stdlib.text("test")
    with pytest.raises(ValueError, match="seq_len"):
        stdlib.batches(2, 0)
    with pytest.raises(ValueError, match="seq_len"):
        stdlib.eval_windows(10**9)
    with pytest.raises(ValueError, match="batch"):
        stdlib.batches(0, 8)
    with pytest.raises(ValueError, match="max_bytes"):
        C.stdlib_corpus("val", max_bytes=-1)
    with pytest.raises(ValueError, match="val_fraction"):
        C.StdlibCorpus(val_fraction=2.0)
    with pytest.raises(FileNotFoundError, match="root"):
        C.StdlibCorpus("/nonexistent/dir").files()


def test_custom_root_selection(tmp_path):
    for rel in ("a.py", "pkg/b.py", "pkg/notes.txt", "test/test_a.py", "pkg/tests/t.py",
                "idlelib/idle_test/x.py", "site-packages/lib.py", "pydoc_data/topics.py",
                "_sysconfigdata__linux.py", "config-3.11-x/python-config.py"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {rel}\n")
    corpus = C.StdlibCorpus(tmp_path, val_fraction=1.0)
    assert corpus.files() == ["a.py", "pkg/b.py"] and corpus.files("train") == []
    assert corpus.text("val") == b"# a.py\n\0# pkg/b.py\n\0"
