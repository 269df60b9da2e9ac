import pytest

from ptq_eval.corpus import STDLIB, load_corpus, shared_documents, split_of, token_stream


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
    with pytest.raises(ValueError, match=r"has no valid split file; accepted splits: \['train'\]"):
        load_corpus(str(tmp_path), "valid")
    with pytest.raises(ValueError, match=r"has no split 'valid'; accepted: train, validation"):
        load_corpus(str(tmp_path / "train.txt"), "valid")


def test_a_directory_of_split_files_keeps_its_splits(tmp_path):
    (tmp_path / "valid.txt").write_text("hello world")
    (tmp_path / "ptb.train.txt").write_text("train text")
    (tmp_path / "wiki.test.raw").write_text("test text")
    assert list(load_corpus(str(tmp_path), "valid").texts()) == ["hello world"]
    assert list(load_corpus(str(tmp_path), "train").texts()) == ["train text"]
    assert list(load_corpus(str(tmp_path), "test").texts()) == ["test text"]


PARAGRAPHS = [f"paragraph {i}: " + "word " * (i % 7) for i in range(400)]


def test_a_text_file_splits_by_paragraph_content_and_the_splits_never_overlap(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(PARAGRAPHS + PARAGRAPHS[:50]) + "\n")  # repeated paragraphs stay on one side
    train, validation = load_corpus(str(path), "train"), load_corpus(str(path), "validation")
    assert 0 < len(validation) < 0.15 * len(train)
    assert shared_documents(train, validation) == 0
    assert set(train.texts()) | set(validation.texts()) == {p.strip("\n") for p in PARAGRAPHS}
    path.write_text("\n\n".join(reversed(PARAGRAPHS)))  # order does not decide the split
    assert set(load_corpus(str(path), "validation").texts()) == set(validation.texts())


def test_a_directory_of_documents_splits_by_content(tmp_path):
    for index, text in enumerate(PARAGRAPHS[:100]):
        (tmp_path / f"doc{index:03}.txt").write_text(text)
    train, validation = load_corpus(str(tmp_path), "train"), load_corpus(str(tmp_path), "validation")
    assert len(train) + len(validation) == 100 and len(validation) > 0
    assert shared_documents(train, validation) == 0


def test_calibration_that_shares_text_with_an_eval_is_refused_before_any_model_loads(tmp_path):
    from ptq_eval.runner import run_study
    from ptq_eval.spec import StudyError, parse_study
    from ptq_eval.store import Store

    (tmp_path / "train.txt").write_text("shared paragraph\n\nonly in train")
    (tmp_path / "valid.txt").write_text("other\n\nshared paragraph")
    study = parse_study(
        {
            "name": "overlap",
            "ladder": ["no/such-model@main"],
            "quant": [{"method": "gptq", "bits": 4}],
            "calibration": {"corpus": str(tmp_path / "train.txt"), "split": "train"},
            "evals": [{"kind": "perplexity", "corpus": str(tmp_path / "valid.txt"), "split": "train"}],
        }
    )
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(StudyError, match=r"shares 1 documents with eval"):
        run_study(study, store)


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


@pytest.fixture
def local_dataset(tmp_path):
    """A tiny dataset laid out as `datasets.load_dataset(DIR)` reads it: one JSON-lines file per split."""
    import json

    directory = tmp_path / "dataset"
    directory.mkdir()
    for split, count in (("train", 6), ("validation", 3), ("test", 2)):
        rows = [{"text": f"{split} row {i}" if i else "", "label": i} for i in range(count)]
        (directory / f"{split}.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return directory


def test_a_hugging_face_dataset_is_a_corpus_one_document_per_row(local_dataset):
    validation = load_corpus(f"hf:{local_dataset}", "validation")
    assert list(validation.texts()) == ["validation row 1", "validation row 2"]  # blank rows dropped
    assert shared_documents(load_corpus(f"hf:{local_dataset}", "train"), validation) == 0
    with pytest.raises(ValueError, match=r"corpus 'hf:.*': .*(split|Unknown split)"):
        load_corpus(f"hf:{local_dataset}", "dev")


def test_presets_join_a_split_as_the_gptq_paper_does(local_dataset, monkeypatch):
    from ptq_eval import hub_text

    monkeypatch.setitem(hub_text.PRESETS, "wikitext2", hub_text.HubText(str(local_dataset), None, "text", "\n\n"))
    assert list(load_corpus("wikitext2", "test").texts()) == ["\n\ntest row 1"]
    assert load_corpus("wikitext2", "test").describe()["files"] == 1


def test_an_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match=r"corpus 'hf:nobody/no-such-dataset': cannot load dataset"):
        load_corpus("hf:nobody/no-such-dataset", "validation")
