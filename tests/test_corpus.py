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


# ----------------------------------------------------------------------------- repeated spans


def test_plant_repeats_copies_an_earlier_span_into_the_chosen_share(stdlib):
    windows = next(iter(stdlib.batches(400, 256, seed=3, steps=1)))
    out, copied = C.plant_repeats(windows, share=0.5, min_len=8, max_len=96, random_share=0.5, seed=7)
    assert torch.equal(windows, next(iter(stdlib.batches(400, 256, seed=3, steps=1))))  # input untouched
    rows = copied.any(1)
    assert 0.4 < rows.float().mean() < 0.6  # the share of windows with a repeat (400 draws)
    assert torch.equal(out[~rows], windows[~rows])  # the other windows are plain text
    n_random = 0
    for i in rows.nonzero().flatten().tolist():
        idx = copied[i].nonzero().flatten()
        b, s = int(idx[0]), len(idx)
        assert 8 <= s <= 96 and torch.equal(idx, torch.arange(b, b + s))  # one contiguous span
        sources = [a for a in range(0, b - s + 1) if torch.equal(out[i, a:a + s], out[i, b:b + s])]
        assert sources, "the copied span occurs earlier in the window"
        changed = (out[i] != windows[i]) & ~copied[i]  # bytes outside the copy: a random source span
        if changed.any():
            n_random += 1
            assert (out[i][changed] != 0).all()  # never the NUL file separator
    assert 0.3 < n_random / int(rows.sum()) < 0.7  # about random_share of the repeats are random bytes


def test_plant_repeats_is_seeded_and_checks_its_arguments(stdlib):
    windows = next(iter(stdlib.batches(8, 64, seed=0, steps=1)))
    a, b = C.plant_repeats(windows, 1.0, 4, 16, seed=1), C.plant_repeats(windows, 1.0, 4, 16, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].any(1).all()  # share 1: every window
    assert not C.plant_repeats(windows, 0.0, 4, 16, seed=1)[1].any()
    for kwargs, arg in [({"share": 1.5}, "share"), ({"random_share": -0.1}, "random_share"),
                        ({"max_len": 40}, "max_len"), ({"min_len": 20, "max_len": 10}, "min_len"),
                        ({"min_len": 0}, "min_len")]:
        with pytest.raises(ValueError, match=arg):
            C.plant_repeats(windows, **{"share": 0.5, "min_len": 4, "max_len": 16, **kwargs})
