"""Text corpora that every machine has offline, split deterministically.

`stdlib-python` is the Python standard library's own source (test suites and IDLE
left out, so the corpus is the same on every install of one Python version).
A file goes to the validation split when the hash of its relative path says so,
so the split never depends on file order or on which files exist elsewhere.

`python-package:NAME` is the source of an installed package (training data only); `hf:DATASET[:CONFIG]`
and the presets `wikitext2`, `ptb`, `c4` are Hugging Face datasets (`hub_text.py`);
and a filesystem path is the user's own text:
- a directory of split files (`train.txt`, `valid.txt`, `test.txt`; also `ptb.train.txt`, `wiki.test.raw`):
  the user's own splits, one document per file;
- any other directory: every `.txt` file below it is a document;
- a `.txt` file: its blank-line-separated paragraphs are the documents.
In the last two cases documents go to `train` or `validation` by a hash of their content (5% validation),
so the two splits never share a document and the split does not depend on order.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ptq_eval.errors import CorpusError
from ptq_eval.hub_text import HF_PREFIX, PRESETS, hub_documents, is_hub_text

STDLIB = "stdlib-python"
PACKAGE_PREFIX = "python-package:"
STDLIB_SPLITS = ("train", "validation")
HASHED_SPLITS = STDLIB_SPLITS
SPLIT_NAMES = ("train", "valid", "validation", "test")
SPLIT_SUFFIXES = (".txt", ".raw", ".tokens")
VALIDATION_PERCENT = 5
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "__pycache__"})


@dataclass(frozen=True)
class Corpus:
    """The documents of one split of a named corpus: one per file, or (`documents`) held in memory."""

    name: str
    split: str
    root: Path
    files: tuple[str, ...]
    documents: tuple[str, ...] | None = None

    def texts(self) -> Iterator[str]:
        """Yield each document's text (files read as UTF-8, undecodable bytes replaced)."""
        if self.documents is not None:
            yield from self.documents
            return
        for rel in self.files:
            yield (self.root / rel).read_text(encoding="utf-8", errors="replace")

    def __len__(self) -> int:
        return len(self.documents) if self.documents is not None else len(self.files)

    def sizes(self) -> list[int]:
        """Each document's size in bytes."""
        if self.documents is not None:
            return [len(text.encode()) for text in self.documents]
        return [(self.root / rel).stat().st_size for rel in self.files]

    def subset(self, indices: list[int]) -> Corpus:
        """These documents, in this order."""
        if self.documents is not None:
            return replace(self, documents=tuple(self.documents[i] for i in indices))
        return replace(self, files=tuple(self.files[i] for i in indices))

    def sha256(self) -> str:
        """Hash of the documents (and file names), in order: the corpus's identity."""
        digest = hashlib.sha256()
        if self.documents is not None:
            for text in self.documents:
                digest.update(text.encode())
                digest.update(b"\0")
            return digest.hexdigest()
        for rel in self.files:
            digest.update(rel.encode())
            digest.update(b"\0")
            digest.update((self.root / rel).read_bytes())
            digest.update(b"\0")
        return digest.hexdigest()

    def document_hashes(self) -> set[str]:
        """The content hashes of its non-blank documents (what an overlap check compares)."""
        return {content_hash(text) for text in self.texts() if text.strip()}

    def describe(self) -> dict:
        """Facts recorded with anything computed from this corpus."""
        return {"corpus": self.name, "split": self.split, "files": len(self), "sha256": self.sha256()}


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _bucket_split(key: str) -> str:
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "validation" if bucket < VALIDATION_PERCENT else "train"


def paragraphs(text: str) -> list[str]:
    """The blank-line-separated, non-blank paragraphs of a text."""
    return [part.strip("\n") for part in re.split(r"\n[ \t\r]*\n", text) if part.strip()]


def _split_files(directory: Path) -> dict[str, str]:
    """split name → file, for a directory of split files (`valid.txt`, `ptb.train.txt`, `wiki.test.raw`)."""
    found = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in SPLIT_SUFFIXES and path.stem.rsplit(".", 1)[-1] in SPLIT_NAMES:
            found[path.stem.rsplit(".", 1)[-1]] = path.name
    return found


def _check_hashed_split(name: str, split: str) -> None:
    if split not in HASHED_SPLITS:
        raise CorpusError(f"corpus {name!r} has no split {split!r}; accepted: {', '.join(HASHED_SPLITS)}")


def split_of(relative_path: str) -> str:
    """The stdlib split a file belongs to, from a hash of its relative path."""
    return _bucket_split(relative_path)


def _python_files(root: Path) -> list[str]:
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if not EXCLUDED_DIRS.intersection(rel.parts[:-1]):
            files.append(rel.as_posix())
    return sorted(files)


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def load_corpus(name: str, split: str = "validation") -> Corpus:
    """Resolve a corpus name (or path) and split to its documents; errors name what is accepted."""
    if is_hub_text(name):
        return Corpus(name, split, Path("."), (), tuple(hub_documents(name, split)))
    if name == STDLIB:
        if split not in STDLIB_SPLITS:
            raise CorpusError(f"corpus {STDLIB!r} has no split {split!r}; accepted: {', '.join(STDLIB_SPLITS)}")
        root = stdlib_root()
        return Corpus(name, split, root, tuple(f for f in _python_files(root) if split_of(f) == split))
    if name.startswith(PACKAGE_PREFIX):
        package = name[len(PACKAGE_PREFIX) :]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise CorpusError(f"corpus {name!r}: no installed package {package!r} to read source from")
        root = Path(next(iter(spec.submodule_search_locations))).parent
        return Corpus(name, "train", root, tuple(f"{package}/{f}" for f in _python_files(root / package)))
    path = Path(name)
    if path.is_file():
        _check_hashed_split(name, split)
        text = path.read_text(encoding="utf-8", errors="replace")
        documents = tuple(doc for doc in paragraphs(text) if _bucket_split(content_hash(doc)) == split)
        return Corpus(name, split, path.parent, (path.name,), documents)
    if path.is_dir():
        named = _split_files(path)
        if named:
            if split not in named:
                raise CorpusError(
                    f"corpus directory {name!r} has no {split} split file; accepted splits: {sorted(named)}"
                )
            return Corpus(name, split, path, (named[split],))
        _check_hashed_split(name, split)
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.txt"))
        chosen = [f for f in files if _bucket_split(content_hash((path / f).read_text("utf-8", "replace"))) == split]
        return Corpus(name, split, path, tuple(chosen))
    raise CorpusError(
        f"unknown corpus {name!r}; accepted: {STDLIB!r}, '{PACKAGE_PREFIX}<package>', a preset "
        f"({', '.join(PRESETS)}), '{HF_PREFIX}<dataset>[:<config>]', a .txt file, or a directory (of split files, "
        "or of .txt documents)"
    )


def shared_documents(first: Corpus, second: Corpus) -> int:
    """How many non-blank documents two corpora share, by content."""
    return len(first.document_hashes() & second.document_hashes())


def token_documents(tokenizer, texts: list[str], batch_files: int = 256) -> list[list[int]]:
    """Each text's token ids (no special tokens added), tokenized in batches."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), batch_files):
        ids.extend(tokenizer(texts[start : start + batch_files], add_special_tokens=False)["input_ids"])
    return ids


def token_stream(tokenizer, corpus: Corpus, batch_files: int = 256) -> torch.Tensor:
    """Tokenize every file and join them into one 1-D stream, an EOS token between files."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    pieces = [token for ids in token_documents(tokenizer, list(corpus.texts()), batch_files) for token in ids + eos]
    return torch.tensor(pieces, dtype=torch.int32)
