"""Synthetic tasks (seqlens.tasks): determinism, exact task semantics, metrics, argument errors."""

from __future__ import annotations

import re

import pytest
import torch

from seqlens import tasks as T

# small, fast arguments for every registered task (seed added per test)
SMALL = {
    "induction": dict(batch=4, seq_len=21, vocab_size=50),
    "mqar": dict(batch=4, n_pairs=6, vocab_size=64, seq_len=48, n_queries=4),
    "copying": dict(batch=4, min_len=3, max_len=9),
    "passkey": dict(batch=3, seq_len=400, depth=0.3),
    "successor": dict(batch=8),
    "icll": dict(batch=3, seq_len=200),
    "noun_lists": dict(batch=3, list_len=4, condition="permute", intervening_len=40),
}


def make(name: str, seed=0, **overrides) -> T.TaskBatch:
    return T.make_task(name, **{**SMALL[name], **overrides, "seed": seed})


def assert_same(a: T.TaskBatch, b: T.TaskBatch) -> None:
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.targets, b.targets)
    assert torch.equal(a.loss_mask, b.loss_mask)
    assert a.meta.keys() == b.meta.keys()


class WordTokenizer:
    """A toy Hugging Face-style tokenizer: words with their leading space, digits one by one."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<pad>": 0}
        self.pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        pieces = re.findall(r" ?[A-Za-z]+| ?\d|\s|[^\sA-Za-z\d]", text)
        return [self.ids.setdefault(p, len(self.ids)) for p in pieces]

    def decode(self, ids) -> str:
        inverse = {i: p for p, i in self.ids.items()}
        return "".join(inverse[int(i)] for i in ids)

    def __len__(self) -> int:
        return 1000


# ----------------------------------------------------------------------------- all tasks


@pytest.mark.parametrize("name", sorted(T.TASKS))
def test_same_seed_same_batch_and_different_seed_differs(name):
    assert_same(make(name, seed=3), make(name, seed=3))
    assert_same(make(name, seed=3), make(name, seed=torch.Generator().manual_seed(3)))
    assert not torch.equal(make(name, seed=3).tokens, make(name, seed=4).tokens)


@pytest.mark.parametrize("name", sorted(T.TASKS))
def test_common_conventions(name):
    b = make(name)
    assert b.task == name
    assert b.tokens.dtype == b.targets.dtype == torch.long and b.loss_mask.dtype == torch.bool
    assert b.tokens.shape == b.targets.shape == b.loss_mask.shape
    assert 0 <= int(b.tokens.min()) and int(b.tokens.max()) < b.vocab.vocab_size
    assert 0 <= int(b.targets.min()) and int(b.targets.max()) < b.vocab.vocab_size
    assert torch.equal(b.targets[:, :-1], b.tokens[:, 1:]), "targets are the next tokens"
    assert not b.loss_mask[:, -1].any() and b.loss_mask.any(dim=1).all()


@pytest.mark.parametrize("name", sorted(T.TASKS))
def test_metrics_on_perfect_and_wrong_predictions(name):
    b = make(name)
    logits = torch.nn.functional.one_hot(b.targets, b.vocab.vocab_size).float() * 30
    assert b.accuracy(logits) == 1.0 and b.accuracy(b.targets) == 1.0
    assert b.exact_match(logits).all() and T.string_accuracy(b, logits) == 1.0
    assert b.loss(logits).item() < 1e-3
    wrong = (b.targets + 1) % b.vocab.vocab_size
    assert b.accuracy(wrong) == 0.0 and not b.exact_match(wrong).any()


def test_batch_helpers_check_shapes_and_move():
    b = make("copying")
    with pytest.raises(ValueError, match="logits"):
        b.accuracy(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="logits"):
        b.loss(torch.zeros(b.batch_size, b.seq_len))
    moved = b.to("cpu")
    assert torch.equal(moved.tokens, b.tokens) and moved.meta["lengths"].device.type == "cpu"
    with pytest.raises(ValueError, match="not byte-level"):
        b.text(0)
    with pytest.raises(KeyError, match="no special token"):
        b.vocab["nope"]


def test_make_task_errors_name_the_problem():
    assert_same(T.make_task("induction", batch=2, seq_len=9, vocab_size=7, seed=1),
                T.induction(2, 9, 7, 1))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        T.make_task("nope")
    with pytest.raises(TypeError, match="unknown argument.*'colour'"):
        T.make_task("induction", batch=2, seq_len=9, vocab_size=7, colour=1)
    with pytest.raises(TypeError, match="missing required argument.*'vocab_size'"):
        T.make_task("induction", batch=2, seq_len=9)
    with pytest.raises(TypeError, match="seed"):
        T.induction(2, 9, 7, seed="x")
    with pytest.raises(ValueError, match="batch"):
        T.induction(0, 9, 7)
    with pytest.raises(TypeError, match="seq_len"):
        T.induction(2, 9.5, 7)


# ----------------------------------------------------------------------------- per task


def test_induction_second_copy_repeats_the_first():
    b = T.induction(5, 41, 30, seed=0)
    first, second = b.meta["first_pos"], b.meta["second_pos"]
    assert torch.equal(b.tokens[:, first], b.tokens[:, second])
    assert (b.tokens[:, 0] == b.vocab["bos"]).all() and (b.tokens[:, 1:] > 0).all()
    assert b.loss_mask[0].nonzero().flatten().tolist() == list(range(21, 40))
    even = T.induction(2, 40, 30, seed=0)  # second copy misses the prefix's last token
    assert even.meta["prefix_len"] == 20 and even.meta["repeat_len"] == 19
    assert torch.equal(even.tokens[:, 1:20], even.tokens[:, 21:40])


def test_mqar_targets_are_values_of_queried_keys():
    b = T.mqar(16, 8, 64, 64, n_queries=5, seed=2)
    keys, values = b.meta["keys"], b.meta["values"]
    assert all(len(set(row)) == 8 for row in keys.tolist()), "keys unique per sequence"
    lo, hi = b.meta["key_range"]
    assert ((keys >= lo) & (keys < hi)).all() and (values >= hi).all() and (values < 64).all()
    assert torch.equal(b.tokens[:, 0:16:2], keys) and torch.equal(b.tokens[:, 1:16:2], values)
    for row in range(16):
        table = dict(zip(keys[row].tolist(), values[row].tolist()))
        positions = b.loss_mask[row].nonzero().flatten()
        assert sorted(positions.tolist()) == sorted(b.meta["query_pos"][row].tolist())
        for pos in positions.tolist():
            query = int(b.tokens[row, pos])
            assert pos >= 16 and int(b.targets[row, pos]) == table[query]
    assert len(set(b.meta["query_keys"][0].tolist())) == 5


def test_mqar_fill_and_errors():
    quiet = T.mqar(2, 4, 32, 40, seed=0, random_fill=False)
    assert int((quiet.tokens == 0).sum()) == 2 * (40 - 8 - 8)
    with pytest.raises(ValueError, match="vocab_size"):
        T.mqar(2, 10, 16, 64)
    with pytest.raises(ValueError, match="seq_len"):
        T.mqar(2, 8, 64, 20)
    with pytest.raises(ValueError, match="n_queries"):
        T.mqar(2, 4, 64, 40, n_queries=5)


def test_copying_format_and_mask():
    b = T.copying(32, 2, 12, alphabet=10, seed=1)
    v = b.vocab
    assert v.vocab_size == 14 and (v["bos"], v["sep"], v["eos"], v["pad"]) == (10, 11, 12, 13)
    for row, n in enumerate(b.meta["lengths"].tolist()):
        toks = b.tokens[row].tolist()
        s = toks[1: n + 1]
        assert toks[: 2 * n + 3] == [v["bos"], *s, v["sep"], *s, v["eos"]]
        assert all(t < 10 for t in s) and set(toks[2 * n + 3:]) <= {v["pad"]}
        assert b.loss_mask[row].nonzero().flatten().tolist() == list(range(n + 1, 2 * n + 2))
    assert set(b.meta["lengths"].tolist()) <= set(range(2, 13)) and b.seq_len == 27


def test_copying_string_accuracy_and_eval_lengths():
    b = T.copying(4, 5, 5, seed=0)
    preds = b.targets.clone()
    preds[0, int(b.meta["copy_start"][0])] += 1  # one wrong character in the first string
    assert T.string_accuracy(b, preds) == 0.75
    assert b.accuracy(preds) == pytest.approx(1 - 1 / (4 * 6))
    evals = T.copying_eval((40, 200), batch=2, seed=0)
    assert [(n, e.tokens.shape[1]) for n, e in evals.items()] == [(40, 83), (200, 403)]
    assert (evals[200].meta["lengths"] == 200).all()
    with pytest.raises(ValueError, match="max_len"):
        T.copying(2, 10, 5)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_passkey_key_at_depth_and_targets_are_the_key(depth):
    b = T.passkey(4, 1200, depth=depth, key_len=5, seed=7)
    assert b.tokens.shape == (4, 1200) and (b.tokens != 0).all(), "exact length, no padding"
    for row, key in enumerate(b.meta["key"]):
        assert len(key) == 5 and key.isdigit() and key[0] != "0"
        k0, k1 = b.meta["key_span"][row].tolist()
        assert bytes(b.tokens[row, k0:k1].tolist()).decode() == key
        a0, a1 = b.meta["answer_span"][row].tolist()
        assert a1 == 1200 and bytes(b.targets[row][b.loss_mask[row]].tolist()).decode() == key
        assert b.text(row).endswith("What is the pass key? The pass key is " + key)
        assert b.text(row).count(key) == 2
    assert (b.meta["actual_depth"] - depth).abs().max() < 0.02
    n0, n1 = b.meta["needle_span"][0].tolist()
    assert bytes(b.tokens[0, n0:n1].tolist()).decode().startswith(" The pass key is ")


def test_passkey_random_depth_varies_per_row_and_is_seeded():
    a = T.passkey(16, 1200, depth=None, seed=3)
    b = T.passkey(16, 1200, depth=None, seed=3)
    assert torch.equal(a.tokens, b.tokens) and a.meta["depth"] is None
    depths = a.meta["actual_depth"]
    assert depths.min() < 0.3 and depths.max() > 0.7  # spread over the filler
    for row, key in enumerate(a.meta["key"]):  # still a well-formed passkey prompt
        assert bytes(a.targets[row][a.loss_mask[row]].tolist()).decode() == key


def test_passkey_compact_style_is_short_and_well_formed():
    b = T.passkey(8, 48, depth=None, key_len=5, seed=2, style="compact")
    assert b.tokens.shape == (8, 48) and (b.tokens != 0).all()
    for row, key in enumerate(b.meta["key"]):
        text = b.text(row)
        assert text.endswith(" key " + key) and text.count(" key " + key + ".") == 1
        k0, k1 = b.meta["key_span"][row].tolist()
        assert bytes(b.tokens[row, k0:k1].tolist()).decode() == key
        assert bytes(b.targets[row][b.loss_mask[row]].tolist()).decode() == key
    assert T.passkey(1, 21, key_len=5, style="compact").tokens.shape == (1, 21)  # needle + question
    with pytest.raises(ValueError, match="style"):
        T.passkey(1, 400, style="short")
    with pytest.raises(ValueError, match="compact passkey prompt"):
        T.passkey(1, 20, style="compact")


def test_passkey_text_level_and_errors():
    tok = WordTokenizer()
    b = T.passkey(2, 300, depth=0.5, key_len=4, seed=0, tokenizer=tok)
    assert not b.vocab.byte_level and b.vocab.vocab_size == 1000 and b.tokens.shape == (2, 300)
    for row, key in enumerate(b.meta["key"]):
        k0, k1 = b.meta["key_span"][row].tolist()
        assert tok.decode(b.tokens[row, k0:k1]) == " " + key
        assert tok.decode(b.targets[row][b.loss_mask[row]]) == " " + key
    with pytest.raises(ValueError, match="seq_len"):
        T.passkey(1, 100)
    with pytest.raises(ValueError, match="depth"):
        T.passkey(1, 400, depth=1.5)
    with pytest.raises(TypeError, match="tokenizer"):
        T.passkey(1, 400, tokenizer=object())


def test_successor_targets_are_the_successor_in_their_family():
    b = T.successor(64, seed=5, n_context=3)
    assert set(b.meta["family"]) == set(T.SUCCESSOR_FAMILIES), "64 draws cover every family"
    for row, (family, answer) in enumerate(zip(b.meta["family"], b.meta["answer"])):
        items = T.SUCCESSOR_FAMILIES[family]
        index = int(b.meta["index"][row])
        assert items[index] == answer and T.successor_of(family, items[index - 1]) == answer
        words = re.findall(r"[A-Za-z0-9]+", b.text(row))
        assert words[-4:] == list(items[index - 3: index + 1])
        s0, s1 = b.meta["answer_span"][row].tolist()
        assert bytes(b.tokens[row, s0:s1].tolist()).decode() == answer
        assert bytes(b.targets[row][b.loss_mask[row]].tolist()).decode() == answer


def test_successor_families_options_and_errors():
    assert T.SUCCESSOR_FAMILIES["weekdays"][:3] == ("Monday", "Tuesday", "Wednesday")
    assert T.successor_of("weekdays", "Wednesday") == "Thursday"
    assert T.successor_of("numbers", "200") is None and len(T.SUCCESSOR_FAMILIES["letters"]) == 26
    months = T.successor(6, seed=0, families="months", seq_len=80, tokenizer=WordTokenizer())
    assert months.meta["family"] == ["months"] * 6 and months.tokens.shape == (6, 80)
    with pytest.raises(ValueError, match="families"):
        T.successor(2, families=["planets"])
    with pytest.raises(ValueError, match="n_context"):
        T.successor(2, families=["weekdays"], n_context=7)
    with pytest.raises(ValueError, match="seq_len"):
        T.successor(2, seq_len=5)


def test_icll_dfa_constraints_and_strings_are_generated_by_their_dfa():
    b = T.icll(12, seed=1)  # no seq_len: nothing is cut
    sep, pad = b.vocab["sep"], b.vocab["pad"]
    assert (b.vocab.vocab_size, sep, pad) == (20, 18, 19)
    for row, dfa in enumerate(b.meta["dfas"]):
        assert 2 <= dfa.n_states <= 12 and dfa.n_symbols == 18
        assert ((dfa.out_degree() >= 1) & (dfa.out_degree() <= 4)).all()
        assert int(dfa.table.max()) < dfa.n_states and len(dfa.alphabet()) <= dfa.n_states
        strings = b.meta["strings"][row]
        assert 10 <= len(strings) <= 20 and all(1 <= len(s) <= 50 for s in strings)
        assert all(T.dfa_accepts(dfa, s) for s in strings)
        assert all(T.dfa_accepts(b.meta["transitions"][row, : dfa.n_states], s) for s in strings)
        n = int(b.meta["lengths"][row])
        assert b.tokens[row, :n].tolist() == [t for s in strings for t in [sep, *s]][1:]
        assert (b.tokens[row, n:] == pad).all()
    assert not b.meta["truncated"].any()


def test_icll_truncation_and_legal_next_tokens():
    b = T.icll(6, seq_len=120, seed=2, n_examples=(15, 20))
    assert b.tokens.shape == (6, 120) and b.meta["truncated"].all()
    for row, dfa in enumerate(b.meta["dfas"]):
        assert all(T.dfa_accepts(dfa, s) for s in b.meta["strings"][row])
    legal = T.icll_legal_next(b)
    assert legal.gather(2, b.targets[..., None]).squeeze(-1)[b.loss_mask].all()
    assert T.legal_next_accuracy(b, b.targets) == 1.0
    illegal = (~legal).float().argmax(dim=-1)  # the first illegal token at each position
    assert T.legal_next_accuracy(b, illegal) == 0.0


def test_dfa_accepts_by_hand():
    table = torch.tensor([[1, -1], [-1, 0]])  # 0 -a-> 1 -b-> 0: the language (ab)*a?
    assert T.dfa_accepts(table, [0, 1, 0]) and T.dfa_accepts(table, [])
    assert not T.dfa_accepts(table, [1]) and not T.dfa_accepts(T.DFA(table), [0, 0])
    assert not T.dfa_accepts(table, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="min_states.*max_states"):
        T.icll(2, vocab=20, max_states=3, min_states=5)


def test_noun_lists_conditions():
    batches = {c: T.noun_lists(8, 5, c, intervening_len=60, seed=4) for c in T.NOUN_CONDITIONS}
    first = batches["repeat"].meta["list1"]
    assert all(b.meta["list1"] == first for b in batches.values()), "list 1 shared by conditions"
    for row, nouns in enumerate(first):
        assert batches["repeat"].meta["list2"][row] == nouns
        permuted = batches["permute"].meta["list2"][row]
        assert sorted(permuted) == sorted(nouns) and permuted != nouns
        assert not set(batches["novel"].meta["list2"][row]) & set(nouns)
        assert len(set(nouns)) == 5 and set(nouns) <= set(T.NOUNS)


def test_noun_lists_spans_mask_and_text():
    b = T.noun_lists(3, 4, "novel", intervening_len=100, seed=0)
    for row in range(3):
        for key in ("list1", "list2"):
            for (s0, s1), noun in zip(b.meta[f"{key}_spans"][row].tolist(), b.meta[key][row]):
                assert bytes(b.tokens[row, s0:s1].tolist()).decode() == noun
        text = b.text(row)
        assert text.startswith(T.MEMORY_INTRO + " " + ", ".join(b.meta["list1"][row]) + ".")
        assert text.endswith(T.MEMORY_CUE + " " + ", ".join(b.meta["list2"][row]) + ".")
        counted = b.meta["list1"][row][1:] + b.meta["list2"][row][1:]
        assert bytes(b.targets[row][b.loss_mask[row]].tolist()).decode() == "".join(counted)
    assert b.meta["counted"].tolist() == [False, True, True, True] and b.meta["exclude_first"]
    assert b.meta["intervening_tokens"] >= 100
    assert torch.equal(b.loss_mask, b.meta["list1_mask"] | b.meta["list2_mask"])
    one = T.noun_lists(2, 1, "permute", seed=0)
    assert one.meta["list1"] == one.meta["list2"] and one.meta["intervening_tokens"] == 0
    with pytest.raises(ValueError, match="condition"):
        T.noun_lists(2, 3, "shuffle")
    with pytest.raises(ValueError, match="list_len"):
        T.noun_lists(2, len(T.NOUNS))


# ----------------------------------------------------------------------------- one data layer


def test_trainer_batch_is_the_task_batch_and_recipe_data_lives_in_tasks():
    from seqlens.models import ModelConfig
    from seqlens.models import train as trainer

    assert trainer.Batch is T.TaskBatch is T.Batch
    for name in ("get_batch", "task_vocab", "masked_loss", "evaluate", "step_seed", "METRICS"):
        assert getattr(trainer, name) is getattr(T, name), name
    cfg = ModelConfig(arch="transformer", vocab_size=16, d_model=8, n_layers=1, n_heads=1)
    recipe = trainer.Recipe("r", cfg, "task:induction", {"seq_len": 12, "vocab_size": 16}, batch_size=3,
                            train_on="all")
    train = T.get_batch(recipe, 0)
    evalb = T.get_batch(recipe, 0, split="eval")
    assert isinstance(train, T.TaskBatch) and train.source is train and train.task == "induction"
    assert train.loss_mask[:, :-1].all() and not train.loss_mask[:, -1].any()  # train_on="all"
    assert torch.equal(evalb.loss_mask, T.induction(3, 12, 16, seed=T.step_seed(0, 0, "eval")).loss_mask)
    assert T.task_vocab(recipe).specials == {"bos": 0}
    corpus = T.get_batch(recipe.replace(data="corpus:stdlib", data_kwargs={"seq_len": 9}), 0)
    assert isinstance(corpus, T.TaskBatch) and corpus.tokens.shape == (3, 9) and corpus.vocab.byte_level
    # plain text by default: the batch marks which targets were planted copies, and none are
    assert set(corpus.meta) == {"copied"} and not corpus.meta["copied"].any()
    assert torch.equal(corpus.targets[:, :-1], corpus.tokens[:, 1:])
    plain = T.TaskBatch(corpus.tokens, corpus.targets, corpus.loss_mask)  # the trainer's Batch(x, y, mask)
    assert plain.vocab is None and plain.meta == {}
