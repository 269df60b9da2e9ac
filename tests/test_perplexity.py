"""Token windows (spread and lm-eval's rolling rule) and the batched, chunked window scorer."""

import numpy as np
import pytest
import torch
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

import ptq_eval.evals.model_parts as model_parts
from ptq_eval.evals.perplexity import document_metrics, window_losses
from ptq_eval.evals.windows import make_windows, rolling_windows


class CharTokenizer:
    """One token per character (ids 1..), 0 as BOS/EOS: enough for building windows."""

    bos_token_id = eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[1 + ord(c) % 50 for c in text] for text in texts]}


def window_lists(windows):
    """Each window as (inputs, scored targets) token lists."""
    out = []
    for start, length, scored in zip(windows.starts, windows.lengths, windows.scored, strict=True):
        tokens = windows.tokens[start : start + length + 1].tolist()
        out.append((tokens[:-1], tokens[len(tokens) - scored :]))
    return out


def test_spread_windows_are_evenly_spaced_and_overlap_by_one_token():
    windows = make_windows(torch.arange(1001), seq_len=10)
    assert len(windows) == 100 and windows.predictions == 1000
    first, second = window_lists(windows)[:2]
    assert first[0] == list(range(10)) and first[1] == list(range(1, 11)) and second[0][0] == 10
    spread = make_windows(torch.arange(1001), seq_len=10, tokens=50)
    assert len(spread) == 5 and spread.starts[-1] >= 800
    with pytest.raises(ValueError, match="fewer than one window"):
        make_windows(torch.arange(5), seq_len=10)


@pytest.mark.parametrize("seq_len", [1, 4, 7])
def test_rolling_windows_are_lm_evals_rule(seq_len):
    texts = ["", "a", "abc", "abcdefg", "abcdefgh", "the quick brown fox jumps over the lazy dog"]
    tokenizer = CharTokenizer()
    ours = window_lists(rolling_windows(tokenizer, texts, seq_len))
    expected = []
    for ids in tokenizer(texts)["input_ids"]:
        for context, continuation in map(make_disjoint_window, get_rolling_token_windows(ids, 0, seq_len, 1)):
            expected.append(((context + continuation)[-(seq_len + 1) :][:-1], continuation))
    assert ours == expected


def test_overlapping_rolling_windows_predict_every_token_once_with_full_context():
    text = "abcdefghijklmnopqrstuvwxyz"
    windows = rolling_windows(CharTokenizer(), [text], seq_len=8, stride=3)
    predicted = [token for _, scored in window_lists(windows) for token in scored]
    assert predicted == CharTokenizer()([text])["input_ids"][0]
    assert windows.lengths.tolist()[1:] == [8] * (len(windows) - 1)
    assert windows.words.tolist() == [1] and windows.bytes.tolist() == [26]
    with pytest.raises(ValueError, match="stride=9 is not accepted"):
        rolling_windows(CharTokenizer(), [text], seq_len=8, stride=9)


def naive_losses(model, windows):
    """Reference: full logits for each window alone, summed over its scored positions."""
    sums = []
    with torch.no_grad():
        for inputs, scored in window_lists(windows):
            logits = model(input_ids=torch.tensor([inputs])).logits[0, len(inputs) - len(scored) :]
            sums.append(torch.nn.functional.cross_entropy(logits, torch.tensor(scored), reduction="sum").item())
    return np.array(sums)


@pytest.fixture(scope="module")
def micro_model(micro_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro_checkpoint).eval()
    return model, AutoTokenizer.from_pretrained(micro_checkpoint)


def test_batched_chunked_scores_equal_one_window_at_a_time(micro_model, monkeypatch):
    model, tokenizer = micro_model
    texts = ["def f(x):\n    return x + 1\n" * 3, "import os\n", "class A:\n    pass\n" * 9]
    windows = rolling_windows(tokenizer, texts, seq_len=16, stride=5)
    monkeypatch.setattr(model_parts, "LOGITS_PER_CHUNK", 7 * model.config.vocab_size)  # 7 positions per chunk
    losses = window_losses(model, windows, batch_size=3)
    assert losses.counts.tolist() == windows.scored.tolist() and losses.nonfinite == 0
    np.testing.assert_allclose(losses.sums, naive_losses(model, windows), rtol=1e-5)
    by_document = {m.name: m for m in document_metrics(losses, windows)}
    assert len(by_document["loss"].values) == 3 and by_document["loss"].n == windows.predictions
    assert by_document["word_perplexity"].value == pytest.approx(
        np.exp(losses.sums.sum() / windows.words.sum()), rel=1e-12
    )


def test_bfloat16_autocast_is_close_and_unknown_autocast_refused(micro_model):
    model, tokenizer = micro_model
    windows = rolling_windows(tokenizer, ["def f(x):\n    return x\n" * 4], seq_len=16)
    exact = window_losses(model, windows).sums.sum()
    assert window_losses(model, windows, autocast="bfloat16").sums.sum() == pytest.approx(exact, rel=0.02)
    with pytest.raises(ValueError, match="autocast='float8' is not accepted"):
        window_losses(model, windows, autocast="float8")


class StubTokenizer:
    """A tokenizer's BOS/EOS facts and whether encoding adds BOS (as Llama-style tokenizers do)."""

    def __init__(self, bos, eos, adds_bos):
        self.bos_token_id, self.eos_token_id, self.adds_bos = bos, eos, adds_bos

    def __call__(self, text):
        return {"input_ids": ([self.bos_token_id] if self.adds_bos else []) + [7]}


def test_bos_rules_follow_the_tokenizer_unless_told():
    from ptq_eval.evals.windows import start_token

    llama, neox = StubTokenizer(1, 2, adds_bos=True), StubTokenizer(0, 0, adds_bos=False)
    assert [start_token(llama, rule, False) for rule in ("auto", "always", "never")] == [1, 1, None]
    assert [start_token(neox, rule, False) for rule in ("auto", "always", "never")] == [None, 0, None]
    assert [start_token(llama, rule, True) for rule in ("auto", "always", "never")] == [
        1,
        1,
        2,
    ]  # lm-eval: BOS, else EOS
    with pytest.raises(ValueError, match="bos: always, but the tokenizer has no BOS token"):
        start_token(StubTokenizer(None, 2, False), "always", False)


def test_windows_with_a_bos_token_score_the_same_targets_with_bos_first():
    stream = torch.arange(10, 1011)
    plain, with_bos = make_windows(stream, 10, 50), make_windows(stream, 10, 50, start=3)
    assert len(plain) == len(with_bos) and with_bos.predictions == plain.predictions
    for i in range(len(plain)):
        a, b = int(plain.starts[i]), int(with_bos.starts[i])
        window = with_bos.tokens[b : b + int(with_bos.lengths[i])]
        assert window[0] == 3 and torch.equal(window[1:], plain.tokens[a : a + 10])
        # the scored predictions' targets: the token after each of the last `scored` positions
        targets = lambda w, s, n, length: w.tokens[s + length - n + 1 : s + length + 1]  # noqa: E731
        assert torch.equal(targets(with_bos, b, 10, 11), targets(plain, a, 10, 10))
