import pytest

from ptq_eval.corpus import STDLIB, load_corpus, split_of, token_stream


def test_stdlib_splits_are_disjoint_deterministic_and_nonempty():
    train = load_corpus(STDLIB, "train")
    validation = load_corpus(STDLIB, "validation")
    assert validation.files and len(train.files) > 10 * len(validation.files)
    assert not set(train.files) & set(validation.files)
    assert all(split_of(f) == "validation" for f in validation.files)
    assert load_corpus(STDLIB, "validation").files == validation.files
    assert not any(part in ("test", "tests", "site-packages") for f in train.files for part in f.split("/")[:-1])


def test_unknown_split_and_corpus_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"has no split 'test'; accepted: train, validation"):
        load_corpus(STDLIB, "test")
    with pytest.raises(ValueError, match=r"unknown corpus 'nope'"):
        load_corpus("nope")
    (tmp_path / "train.txt").write_text("a")
    with pytest.raises(ValueError, match=r"has no valid.txt; accepted splits: \['train'\]"):
        load_corpus(str(tmp_path), "valid")


def test_directory_and_file_corpora(tmp_path):
    (tmp_path / "valid.txt").write_text("hello world")
    assert list(load_corpus(str(tmp_path), "valid").texts()) == ["hello world"]
    assert list(load_corpus(str(tmp_path / "valid.txt")).texts()) == ["hello world"]


def test_hash_changes_with_content(tmp_path):
    (tmp_path / "valid.txt").write_text("one")
    before = load_corpus(str(tmp_path), "valid").sha256()
    (tmp_path / "valid.txt").write_text("two")
    assert load_corpus(str(tmp_path), "valid").sha256() != before


def test_token_stream_separates_files_with_eos(micro_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(micro_checkpoint)
    (tmp_path / "valid.txt").write_text("def f(x):\n    return x\n")
    corpus = load_corpus(str(tmp_path), "valid")
    stream = token_stream(tokenizer, corpus)
    assert stream[-1].item() == tokenizer.eos_token_id
    assert tokenizer.decode(stream[:-1].tolist()) == "def f(x):\n    return x\n"
