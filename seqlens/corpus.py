"""A real-text corpus present on every machine: the Python standard library's own source.

Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, excluding any file below a
directory named ``site-packages``, ``test``, ``tests`` (this covers ``lib2to3/tests``) or
``idle_test`` (``idlelib/idle_test``), and three kinds of generated files that are not written
source: ``pydoc_data/topics.py`` (757 KB of Sphinx prose dumped into one dict literal; it alone
would be 62% of the validation bytes), ``_sysconfigdata_*.py`` and ``config-*/`` (per-platform
build configuration). Paths are kept relative to the stdlib root in POSIX form and sorted, so the
file order is deterministic.

Split: by file, never by window. A file is in validation iff the first 8 bytes of
``sha256(relative_path)``, read as a big-endian integer, fall below ``val_fraction · 2^64``
(default 5%): stable across runs, machines and Python hash seeds, and a file keeps its split when
other files come or go.

Text: the files of a split, in sorted order, each followed by one NUL byte (``EOS_ID = 0``, a
byte that never occurs in Python source), read as raw bytes (no decoding). Tokenization is
byte-level (:class:`ByteTokenizer`, vocab 256, token = byte value).

Size for CPython 3.11.7 (Linux, this repo's environment)::

    files   731 in total: 690 train, 41 val
    bytes   11,322,725 of source: 10,855,127 train, 467,598 val (4.1%)
            (the concatenated texts add one NUL per file: 10,855,817 and 467,639 bytes)

:func:`corpus_stats` computes these numbers for the running interpreter. The texts are read
lazily on first use and cached in memory (``functools.lru_cache``).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from seqlens.tasks.base import SeedLike, make_generator
from seqlens.validate import check_int, positive_int

Split = Literal["train", "val"]
SPLITS: tuple[str, ...] = ("train", "val")
EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})
GENERATED_FILES = frozenset({"pydoc_data/topics.py"})
VAL_FRACTION = 0.05
EOS_ID = 0

__all__ = [
    "EOS_ID",
    "ByteTokenizer",
    "CorpusStats",
    "StdlibCorpus",
    "corpus_stats",
    "file_split",
    "plant_repeats",
    "stdlib_corpus",
    "stdlib_files",
    "stdlib_root",
]


class ByteTokenizer:
    """Byte-level tokenizer: token id = byte value, ``vocab_size = 256``.

    ``encode`` takes ``str`` (encoded as UTF-8) or ``bytes``; ``decode`` returns ``str`` with
    invalid UTF-8 (e.g. a window cut inside a multi-byte character) replaced by U+FFFD, or exact
    ``bytes`` with ``decode_bytes``. No special tokens are added; ``eos_id = 0`` (NUL) separates
    files in the corpus.
    """

    vocab_size = 256
    eos_id = EOS_ID

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, bytes | bytearray):
            raise TypeError(f"text: expected str or bytes, got {type(text).__name__}")
        return list(text)

    def decode_bytes(self, ids: list[int] | torch.Tensor) -> bytes:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= v < 256 for v in values):
            raise ValueError("ids: byte tokens must lie in [0, 256)")
        return bytes(values)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size


# ----------------------------------------------------------------------------- files and split


def stdlib_root() -> Path:
    """The standard library directory of the running interpreter (outside any virtualenv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return split


def file_split(relpath: str, val_fraction: float = VAL_FRACTION) -> str:
    """``"val"`` or ``"train"`` for a relative path, from the sha256 of the path (see module)."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:8], "big") < val_fraction * 2**64 else "train"


def _is_generated(relpath: str) -> bool:
    """Build outputs rather than written source: the docs dump and per-platform config."""
    first, name = relpath.split("/", 1)[0], relpath.rsplit("/", 1)[-1]
    return (relpath in GENERATED_FILES or name.startswith("_sysconfigdata")
            or first.startswith("config-"))


@lru_cache(maxsize=8)
def stdlib_files(root: str | None = None) -> tuple[str, ...]:
    """Sorted relative POSIX paths of the corpus files under ``root`` (default: the stdlib)."""
    base = Path(root) if root is not None else stdlib_root()
    if not base.is_dir():
        raise FileNotFoundError(f"root: {base} is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        rel = Path(dirpath).relative_to(base)
        found.extend((rel / name).as_posix() for name in filenames if name.endswith(".py"))
    return tuple(sorted(p for p in found if not _is_generated(p)))


@lru_cache(maxsize=8)
def _split_text(root: str, split: str, val_fraction: float) -> bytes:
    """The concatenated bytes of one split (each file followed by NUL); cached."""
    chunks = []
    for rel in stdlib_files(root):
        if file_split(rel, val_fraction) == split:
            chunks.append((Path(root) / rel).read_bytes())
            chunks.append(bytes([EOS_ID]))
    return b"".join(chunks)


@lru_cache(maxsize=8)
def _split_tensor(root: str, split: str, val_fraction: float) -> torch.Tensor:
    """``uint8`` tensor view of a split's bytes; cached."""
    data = _split_text(root, split, val_fraction)
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


# ----------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class CorpusStats:
    """File and byte counts per split (bytes of source, without the NUL separators)."""

    root: str
    files_train: int
    files_val: int
    bytes_train: int
    bytes_val: int

    @property
    def files(self) -> int:
        return self.files_train + self.files_val

    @property
    def bytes(self) -> int:
        return self.bytes_train + self.bytes_val

    def to_dict(self) -> dict[str, int | str]:
        return {**asdict(self), "files": self.files, "bytes": self.bytes}


class StdlibCorpus:
    """The standard-library corpus: files, split texts, and token windows for LM training.

    ``root`` defaults to the running interpreter's stdlib (another directory may be given, e.g.
    for tests); ``val_fraction`` is the share of files in validation.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None,
                 val_fraction: float = VAL_FRACTION) -> None:
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction: expected a float in [0, 1], got {val_fraction!r}")
        self.root = str(Path(root) if root is not None else stdlib_root())
        self.val_fraction = float(val_fraction)
        self.tokenizer = ByteTokenizer()

    def files(self, split: Split | None = None) -> list[str]:
        """Relative paths of the files of ``split`` (all files when None), sorted."""
        paths = stdlib_files(self.root)
        if split is None:
            return list(paths)
        _check_split(split)
        return [p for p in paths if file_split(p, self.val_fraction) == split]

    def text(self, split: Split = "train") -> bytes:
        """The split's files concatenated (each followed by NUL), as raw bytes; cached."""
        return _split_text(self.root, _check_split(split), self.val_fraction)

    def tokens(self, split: Split = "train") -> torch.Tensor:
        """``uint8`` tensor of the split's byte tokens (shared, do not modify); cached."""
        return _split_tensor(self.root, _check_split(split), self.val_fraction)

    def stats(self) -> CorpusStats:
        """File and byte counts of both splits (reads file sizes, not contents)."""
        sizes = {split: [os.path.getsize(Path(self.root) / p) for p in self.files(split)]
                 for split in SPLITS}
        return CorpusStats(self.root, len(sizes["train"]), len(sizes["val"]),
                           sum(sizes["train"]), sum(sizes["val"]))

    def batches(self, batch: int, seq_len: int, seed: SeedLike = 0,
                split: Split = "train", steps: int | None = None) -> Iterator[torch.Tensor]:
        """Random windows for LM training: ``LongTensor[batch, seq_len + 1]`` per step.

        Window starts are uniform over the split (windows may cross file boundaries, marked by
        NUL); inputs are ``w[:, :-1]``, targets ``w[:, 1:]``. Endless unless ``steps`` is given;
        the same seed gives the same sequence of batches. Arguments are checked on the call,
        not on the first ``next()``.
        """
        data = self._windows_source(split, seq_len)
        batch = _positive("batch", batch)
        if steps is not None:
            _positive("steps", steps)
        return _random_windows(data, batch, seq_len, make_generator(seed), steps)

    def eval_windows(self, seq_len: int, split: Split = "val",
                     max_windows: int | None = None) -> torch.Tensor:
        """Fixed windows for evaluation: ``LongTensor[N, seq_len + 1]``.

        Windows start every ``seq_len`` bytes (consecutive windows share one byte, so every byte
        after the first is a target exactly once). ``max_windows`` keeps that many windows evenly
        spaced over the split.
        """
        data = self._windows_source(split, seq_len)
        starts = torch.arange(0, len(data) - seq_len, seq_len)
        if max_windows is not None and _positive("max_windows", max_windows) < len(starts):
            pick = torch.linspace(0, len(starts) - 1, max_windows).round().long()
            starts = starts[pick]
        return data[starts[:, None] + torch.arange(seq_len + 1)].long()

    def _windows_source(self, split: str, seq_len: int) -> torch.Tensor:
        """The split's tokens, checked to hold at least one window of ``seq_len + 1``."""
        data = self.tokens(split)
        seq_len = _positive("seq_len", seq_len)
        if len(data) < seq_len + 1:
            raise ValueError(f"seq_len: {seq_len} + 1 exceeds the {split} split's "
                             f"{len(data)} bytes")
        return data


def _random_windows(data: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator,
                    steps: int | None) -> Iterator[torch.Tensor]:
    """Yield ``steps`` (or endless) batches of uniformly placed windows of ``seq_len + 1``."""
    offsets = torch.arange(seq_len + 1)
    step = 0
    while steps is None or step < steps:
        starts = torch.randint(0, len(data) - seq_len, (batch, 1), generator=gen)
        yield data[starts + offsets].long()
        step += 1


_positive = positive_int  # the shared validator (seqlens.validate)


# ----------------------------------------------------------------------------- repeated spans


def plant_repeats(windows: torch.Tensor, share: float, min_len: int = 8, max_len: int = 96,
                  random_share: float = 0.5, seed: SeedLike = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a span from earlier in the window to a later place in a ``share`` of the windows, so
    in-context copying (induction) pays in LM training; returns ``(windows, copied)``.

    Per chosen window (each chosen independently with probability ``share``): a span length
    ``s`` uniform in ``[min_len, max_len]``, a source start ``a`` and a destination ``b >= a + s``
    (both uniform, spans never overlap), then ``w[b:b+s] = w[a:a+s]``. In a ``random_share`` of the
    chosen windows the source span is first overwritten with uniform random bytes ``1..255``
    (never NUL, the corpus' file separator): copying then cannot lean on text statistics, and every
    byte's embedding sees the copy task (the induction finder scores repeated random bytes).
    ``copied [B, L]`` marks the destination bytes. The input is not modified.
    """
    if windows.dim() != 2:
        raise ValueError(f"windows: expected a [batch, length] tensor, got shape {list(windows.shape)}")
    for name, value in (("share", share), ("random_share", random_share)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a float in [0, 1], got {value!r}")
    min_len, max_len = _positive("min_len", min_len), _positive("max_len", max_len)
    length = windows.shape[1]
    if min_len > max_len or 2 * max_len > length:
        raise ValueError(f"min_len, max_len: expected min_len <= max_len <= length / 2 = {length // 2}, "
                         f"got {min_len}, {max_len}")
    gen, out = make_generator(seed), windows.clone()
    copied = torch.zeros_like(out, dtype=torch.bool)
    chosen = (torch.rand(len(out), generator=gen) < share).tolist()
    for i in (i for i, c in enumerate(chosen) if c):
        s = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        a = int(torch.randint(0, length - 2 * s + 1, (1,), generator=gen))
        b = int(torch.randint(a + s, length - s + 1, (1,), generator=gen))
        if float(torch.rand(1, generator=gen)) < random_share:
            out[i, a:a + s] = torch.randint(1, 256, (s,), generator=gen, dtype=out.dtype)
        out[i, b:b + s] = out[i, a:a + s]
        copied[i, b:b + s] = True
    return out, copied


# ----------------------------------------------------------------------------- functions


def stdlib_corpus(split: Split = "train", max_bytes: int | None = None) -> bytes:
    """The text of ``split`` of the default corpus; its first ``max_bytes`` bytes if given."""
    text = StdlibCorpus().text(split)
    if max_bytes is None:
        return text
    return text[:check_int("max_bytes", max_bytes, low=0)]


def corpus_stats(root: str | os.PathLike[str] | None = None) -> dict[str, int | str]:
    """Files and bytes per split of the corpus (default: this interpreter's stdlib)."""
    return StdlibCorpus(root).stats().to_dict()


# ----------------------------------------------------------------------------- Python lexer
# Byte-level features of Python source (the interpretable-cells probe correlates units with them).

PYTHON_FEATURES = ("in_string", "in_comment", "bracket_depth", "indent", "line_pos")
_QUOTES = (ord("'"), ord('"'))
_OPEN, _CLOSE = set(b"([{"), set(b")]}")


def _as_bytes(text: Any, name: str = "text") -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    raise ValueError(f"{name}: expected str or bytes, got {type(text).__name__}")


def _string_end(b: bytes, i: int) -> int:
    """End (exclusive) of the string literal whose opening quote is at ``i``: past the closing
    quote(s); a backslash always skips the next byte (also in raw strings, where ``\\"`` does not
    close the literal either); an unclosed single-quoted literal stops before the newline, any
    literal before a NUL (file boundary) or at the end of the text."""
    q = b[i]
    triple = b[i:i + 3] == bytes([q]) * 3
    j = i + (3 if triple else 1)
    while j < len(b):
        c = b[j]
        if c == 0 or (c == 10 and not triple):
            return j
        if c == 92:  # backslash
            j += 2
            continue
        if c == q and (not triple or b[j:j + 3] == bytes([q]) * 3):
            return j + (3 if triple else 1)
        j += 1
    return len(b)


_PREFIXES = {b"r", b"u", b"b", b"f", b"br", b"rb", b"fr", b"rf"}


def _is_name_byte(c: int) -> bool:
    return c == 95 or c >= 128 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122


def _prefix_len(b: bytes, i: int) -> int:
    """Length of the string prefix (``r``, ``b``, ``f``, ``u``, ``br``, ``rf``, ... any case)
    right before the quote at ``i``: 0 when the letters there are the end of a longer name."""
    for k in (2, 1):
        if i - k >= 0 and b[i - k:i].lower() in _PREFIXES and (i - k == 0 or not _is_name_byte(b[i - k - 1])):
            return k
    return 0


def _scan_code(b: bytes) -> tuple[list[int], list[int], list[int]]:
    """``(in_string, in_comment, bracket_depth)`` per byte (see :func:`python_features`)."""
    n = len(b)
    string, comment, depth = [0] * n, [0] * n, [0] * n
    d, i = 0, 0
    while i < n:
        c = b[i]
        if c == 0:  # NUL separates files in the corpus: reset
            d, i = 0, i + 1
            continue
        if c == 35:  # '#': comment to the end of the line
            j = i
            while j < n and b[j] not in (10, 0):
                j += 1
            comment[i:j] = [1] * (j - i)
            depth[i:j] = [d] * (j - i)
            i = j
            continue
        if c in _QUOTES:
            j, k = _string_end(b, i), i - _prefix_len(b, i)
            string[k:j] = [1] * (j - k)
            depth[i:j] = [d] * (j - i)
            i = j
            continue
        if c in _OPEN:
            d += 1
        elif c in _CLOSE:
            d = max(0, d - 1)
        depth[i] = d
        i += 1
    return string, comment, depth


def _scan_lines(b: bytes) -> tuple[list[int], list[int]]:
    """``(indent, line_pos)`` per byte: the column of each byte in its physical line (newline and
    NUL end a line and belong to it), and the line's leading whitespace in columns (a tab advances
    to the next multiple of 8, Python's rule)."""
    n = len(b)
    indent, pos = [0] * n, [0] * n
    start = 0
    while start < n:
        end = start
        while end < n and b[end] not in (10, 0):
            end += 1
        col, k = 0, start
        while k < end and b[k] in (32, 9, 12):
            col = (col // 8 + 1) * 8 if b[k] == 9 else (0 if b[k] == 12 else col + 1)
            k += 1
        stop = min(end + 1, n)
        indent[start:stop] = [col] * (stop - start)
        pos[start:stop] = list(range(stop - start))
        start = stop
    return indent, pos


def python_features(text: str | bytes) -> dict[str, Tensor]:
    """Byte-level features of Python source, each a float tensor ``[n_bytes]``:

    - ``in_string``: byte t belongs to a string literal, from its prefix (``r``, ``b``, ``f``,
      ``u``, ``br``, ``rf``, ... any case) and opening quote(s) through its closing quote(s): the
      span of a ``tokenize`` STRING token. Single and double quotes, triple quotes, backslash
      escapes (which never close a literal, raw or not). Approximations: f-string replacement
      fields count as inside the string (Python 3.11's tokenizer agrees; 3.12 splits f-strings);
      an unterminated single-quoted literal ends at the newline.
    - ``in_comment``: from ``#`` (outside strings) up to, not including, the newline.
    - ``bracket_depth``: open ``( [ {`` after reading byte t, counting brackets in code only (an
      opening bracket has the inner depth, a closing one the outer); unmatched closers are ignored
      (the depth never goes below 0, e.g. for an excerpt starting inside brackets).
    - ``indent``: leading whitespace of byte t's physical line, in columns (also for lines inside
      multi-line strings and for continuation lines).
    - ``line_pos``: column of byte t in its line, in bytes (0 = first byte; the newline gets the
      line's length).

    NUL bytes (file separators of the stdlib corpus) reset the scanner. The scanner starts in code:
    an excerpt cut inside a string or comment is mislabelled until that literal ends.
    """
    b = _as_bytes(text)
    string, comment, depth = _scan_code(b)
    indent, pos = _scan_lines(b)
    vals = {"in_string": string, "in_comment": comment, "bracket_depth": depth, "indent": indent, "line_pos": pos}
    return {k: torch.tensor(vals[k], dtype=torch.float32) for k in PYTHON_FEATURES}
