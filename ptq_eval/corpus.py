"""Text corpora that every machine has offline, split deterministically.

`stdlib-python` is the Python standard library's own source (test suites and IDLE
left out, so the corpus is the same on every install of one Python version).
A file goes to the validation split when the hash of its relative path says so,
so the split never depends on file order or on which files exist elsewhere.

`python-package:NAME` is the source of an installed package (training data only),
and a filesystem path is the user's own text: a `.txt` file, or a directory
holding `<split>.txt` files (e.g. `train.txt`, `valid.txt`, `test.txt`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

STDLIB = "stdlib-python"
PACKAGE_PREFIX = "python-package:"
STDLIB_SPLITS = ("train", "validation")
VALIDATION_PERCENT = 5
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "__pycache__"})


@dataclass(frozen=True)
class Corpus:
    """An ordered list of text files that make one split of a named corpus."""

    name: str
    split: str
    root: Path
    files: tuple[str, ...]

    def texts(self) -> Iterator[str]:
        """Yield each file's text (UTF-8; undecodable bytes replaced)."""
        for rel in self.files:
            yield (self.root / rel).read_text(encoding="utf-8", errors="replace")

    def sha256(self) -> str:
        """Hash of the relative paths and contents, in order: the corpus's identity."""
        digest = hashlib.sha256()
        for rel in self.files:
            digest.update(rel.encode())
            digest.update(b"\0")
            digest.update((self.root / rel).read_bytes())
            digest.update(b"\0")
        return digest.hexdigest()

    def describe(self) -> dict:
        """Facts recorded with anything computed from this corpus."""
        return {"corpus": self.name, "split": self.split, "files": len(self.files), "sha256": self.sha256()}


def split_of(relative_path: str) -> str:
    """The stdlib split a file belongs to, from a hash of its relative path."""
    bucket = int(hashlib.sha256(relative_path.encode()).hexdigest()[:8], 16) % 100
    return "validation" if bucket < VALIDATION_PERCENT else "train"


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
    """Resolve a corpus name (or path) and split to its files; errors name what is accepted."""
    if name == STDLIB:
        if split not in STDLIB_SPLITS:
            raise ValueError(f"corpus {STDLIB!r} has no split {split!r}; accepted: {', '.join(STDLIB_SPLITS)}")
        root = stdlib_root()
        return Corpus(name, split, root, tuple(f for f in _python_files(root) if split_of(f) == split))
    if name.startswith(PACKAGE_PREFIX):
        package = name[len(PACKAGE_PREFIX) :]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"corpus {name!r}: no installed package {package!r} to read source from")
        root = Path(next(iter(spec.submodule_search_locations))).parent
        return Corpus(name, "train", root, tuple(f"{package}/{f}" for f in _python_files(root / package)))
    path = Path(name)
    if path.is_file():
        return Corpus(name, split, path.parent, (path.name,))
    if path.is_dir():
        available = sorted(p.stem for p in path.glob("*.txt"))
        if split not in available:
            raise ValueError(f"corpus directory {name!r} has no {split}.txt; accepted splits: {available}")
        return Corpus(name, split, path, (f"{split}.txt",))
    raise ValueError(
        f"unknown corpus {name!r}; accepted: {STDLIB!r}, '{PACKAGE_PREFIX}<package>', "
        "a .txt file, or a directory of <split>.txt files"
    )


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
