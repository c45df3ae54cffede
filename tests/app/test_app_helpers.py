"""The dashboard's plain helpers (no Streamlit run): prompt parsing and labels, the token-hover
HTML, the ``seqlens app`` subcommand, and that the app ships with the package."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import torch
import pytest

from seqlens.app import MAIN
from seqlens.app.hover import token_hover_html
from seqlens.app.prompt import PromptError, byte_label, modes_for, parse_ids, token_labels

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models():
    import seqlens

    return {name: seqlens.load(name) for name in ("induction-attn2", "tiny-gpt2", "text-transformer")}


# ----------------------------------------------------------------------------- prompt


def test_parse_ids_accepts_commas_and_spaces():
    assert parse_ids(" 1, 2 3,4 ", 10) == [1, 2, 3, 4]


@pytest.mark.parametrize("text, message", [("", "empty"), (" , ", "empty"), ("1, 2.5", "'2.5' is not an integer"),
                                           ("-1", "outside the vocabulary"), ("10", "[0, 10)")])
def test_parse_ids_rejects_bad_input(text, message):
    with pytest.raises(PromptError, match=re.escape(message)):
        parse_ids(text, 10)


def test_byte_labels_make_whitespace_visible():
    assert [byte_label(b) for b in b"a \n\t~\x00\xff"] == ["a", "␣", "↵", "⇥", "~", "\\x00", "\\xff"]


def test_token_labels_per_model_kind(models):
    assert token_labels(models["induction-attn2"], [0, 5]) == ["BOS", "5"]  # task ids, specials named
    assert token_labels(models["tiny-gpt2"], list(b"hi ")) == ["h", "i", "␣"]  # bytes


def test_prompt_modes_per_model_kind(models):
    assert modes_for(models["induction-attn2"]) == ["Task sample", "Token ids"]   # task vocabulary
    assert modes_for(models["tiny-gpt2"]) == ["Free text", "Token ids"]           # byte-level, no recipe
    assert modes_for(models["text-transformer"]) == ["Free text", "Task sample", "Token ids"]


# ----------------------------------------------------------------------------- hover view


def test_hover_html_carries_the_patterns_and_escapes_labels():
    pat = np.tril(np.ones((2, 3, 3))) / np.arange(1, 4)[None, :, None]
    labels = ["</script><b>x", "&amp;", "ok"]
    html = token_hover_html(pat, labels, ["L0H0", "L0H1"], caption="<i>c</i>")
    assert "</script><b>" not in html and "<i>c</i>" not in html  # prompt text cannot inject markup
    assert "http" not in html  # self-contained: no external resources
    data = json.loads(re.search(r"const D = (\{.*?\});\n", html).group(1))
    assert data["labels"] == labels and data["heads"] == ["L0H0", "L0H1"]
    assert data["att"][0][2] == [333, 333, 333] and data["att"][0][0] == [1000, 0, 0]
    assert data["pinned"] == 2  # the last token is shown before any hover


def test_hover_html_checks_shapes():
    with pytest.raises(ValueError, match="patterns"):
        token_hover_html(np.zeros((1, 3, 3)), ["a", "b"], ["h"])
    with pytest.raises(ValueError, match="heads"):
        token_hover_html(np.zeros((2, 2, 2)), ["a", "b"], ["h"])


# ----------------------------------------------------------------------------- CLI and packaging


class FakeServer:
    """Stands in for the `streamlit run` process."""

    calls: list[list[str]] = []
    envs: list[dict] = []

    def __init__(self, cmd, env=None):
        FakeServer.calls.append(cmd)
        FakeServer.envs.append(env)

    def wait(self):
        return 3

    def send_signal(self, signum):
        pass


QUIET = ["--browser.gatherUsageStats", "false", "--server.showEmailPrompt", "false"]  # offline, no prompt
LOCAL = ["--browser.serverAddress", "127.0.0.1", "--server.address", "127.0.0.1"]    # this machine only


def test_cli_app_runs_streamlit_on_the_installed_app(monkeypatch, capsys):
    import signal
    import subprocess
    import sys

    from seqlens.cli import main

    FakeServer.calls = []
    monkeypatch.setattr(subprocess, "Popen", FakeServer)
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["app", "--server.port", "8502", "--server.headless", "true"]) == 3  # exit code forwarded
    assert FakeServer.calls == [[sys.executable, "-m", "streamlit", "run", str(MAIN), *QUIET, *LOCAL,
                                 "--server.port", "8502", "--server.headless", "true"]]
    assert capsys.readouterr().out == "seqlens app: serving http://127.0.0.1:8502\n"  # the URL really served
    assert main(["app", "--", "--server.port", "1"]) == 3 and FakeServer.calls[-1][-2:] == ["--server.port", "1"]
    main(["app", "--browser.gatherUsageStats=true"])  # the caller's choice is kept, not duplicated
    assert FakeServer.calls[-1][5:] == ["--server.showEmailPrompt", "false", *LOCAL, "--browser.gatherUsageStats=true"]
    assert Path(FakeServer.calls[0][4]).is_file() and Path(FakeServer.calls[0][4]).name == "main.py"
    assert signal.getsignal(signal.SIGTERM) == handler  # restored


def test_cli_app_listens_on_localhost_unless_exposed(monkeypatch, capsys):
    """Issue 15 item 7: 127.0.0.1 by default; --expose or the user's own --server.address otherwise,
    and the printed URL is the one served."""
    import subprocess

    from seqlens.cli import main

    FakeServer.calls = []
    monkeypatch.setattr(subprocess, "Popen", FakeServer)
    main(["app"])
    assert FakeServer.calls[-1][5:] == [*QUIET, *LOCAL]
    assert "http://127.0.0.1:8501" in capsys.readouterr().out
    main(["app", "--expose"])  # every interface: no address passed, "--expose" itself not forwarded
    cmd = FakeServer.calls[-1]
    assert "--expose" not in cmd and "--server.address" not in cmd
    assert cmd[cmd.index("--browser.serverAddress") + 1] == "localhost"
    assert "every network interface" in capsys.readouterr().out
    main(["app", "--server.address=10.1.2.3", "--server.port=9000"])
    cmd = FakeServer.calls[-1]
    assert cmd.count("--server.address=10.1.2.3") == 1 and "--server.address" not in cmd
    assert cmd[cmd.index("--browser.serverAddress") + 1] == "10.1.2.3"
    assert capsys.readouterr().out == "seqlens app: serving http://10.1.2.3:9000\n"


def test_cli_app_model_dirs(monkeypatch, tmp_path, capsys):
    import os
    import subprocess

    from seqlens.cli import main

    FakeServer.calls, FakeServer.envs = [], []
    monkeypatch.setattr(subprocess, "Popen", FakeServer)
    monkeypatch.delenv("SEQLENS_MODEL_DIRS", raising=False)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    main(["app"])
    assert "SEQLENS_MODEL_DIRS" not in FakeServer.envs[-1]  # only the zoo by default
    main(["app", "--model-dir", str(tmp_path / "a"), f"--model-dir={tmp_path / 'b'}"])
    assert "--model-dir" not in " ".join(FakeServer.calls[-1])
    assert FakeServer.envs[-1]["SEQLENS_MODEL_DIRS"] == os.pathsep.join(
        [os.path.realpath(tmp_path / "a"), os.path.realpath(tmp_path / "b")])
    n = len(FakeServer.calls)
    assert main(["app", "--model-dir", str(tmp_path / "nope")]) == 2 and len(FakeServer.calls) == n
    assert "--model-dir: " in capsys.readouterr().err


def test_cli_app_help(capsys, monkeypatch):
    import subprocess

    from seqlens.cli import main

    monkeypatch.setattr(subprocess, "Popen", lambda cmd: pytest.fail("must not start streamlit"))
    assert main(["app", "--help"]) == 0
    assert "streamlit run" in capsys.readouterr().out


def test_app_views_ship_with_the_package():
    """Every folder of the app with Python files is a package listed in pyproject.toml, so the
    wheel carries the views that ``st.navigation`` runs."""
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for folder in sorted({p.parent for p in (ROOT / "app").rglob("*.py")}):
        rel = folder.relative_to(ROOT / "app")
        name = ".".join(("seqlens", "app", *rel.parts))
        assert (folder / "__init__.py").is_file(), folder
        assert name in packages, f"pyproject.toml [tool.setuptools] packages lacks {name!r}"


# ----------------------------------------------------------------------------- finders share patterns


def test_shared_patterns_compute_each_layer_once_and_change_no_score():
    """Issue 17: the Heads page's finders read each layer's implicit attention once, not once each."""
    import seqlens
    from seqlens.app.analyses import shared_patterns
    from seqlens.circuits import FINDERS
    from seqlens.models import zoo

    model = seqlens.build(zoo.PRESETS["tiny-mamba"][0], seed=0).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    names = ["previous_token", "duplicate_token", "induction", "ngram2"]
    plain = {n: FINDERS[n](model, tokens=tokens).scores for n in names}
    calls: list[int] = []
    with _counting(model, calls), shared_patterns(model):
        shared = {n: FINDERS[n](model, tokens=tokens).scores for n in names}
    assert sorted(calls) == list(range(model.cfg.n_layers))  # once per layer for four finders
    for n in names:
        torch.testing.assert_close(shared[n], plain[n], rtol=0, atol=0, equal_nan=True)  # NaN: no repeat
    assert "mixer_pattern" not in vars(model)  # nothing left on the model


class _counting:
    """Record the layers ``model.mixer_pattern`` computes (under any memo entered after this)."""

    def __init__(self, model, calls):
        self.model, self.calls = model, calls

    def __enter__(self):
        compute = self.model.mixer_pattern

        def counting(tokens, layer):
            self.calls.append(layer)
            return compute(tokens, layer)

        self.model.mixer_pattern = counting

    def __exit__(self, *exc):
        del self.model.mixer_pattern


def test_passkey_series_group_by_training_length():
    """The capacity fit runs per training length: a -t128 organism never joins the length-64 fit."""
    from seqlens.app.state import passkey_series

    names = ["passkey-mamba-n16", "passkey-mamba-n2", "passkey-mamba-n4-t128", "passkey-mamba-n8-t128",
             "passkey-mamba-n2-t128", "transformer-passkey", "text-mamba", "passkey-mamba-n4"]
    assert passkey_series(names) == {64: ["passkey-mamba-n2", "passkey-mamba-n4", "passkey-mamba-n16"],
                                     128: ["passkey-mamba-n2-t128", "passkey-mamba-n4-t128", "passkey-mamba-n8-t128"]}
    assert passkey_series(["passkey-mamba-n2", "passkey-mamba-n4-t128"]) == {}  # one per length: nothing to fit
