"""SQLite result store: one transaction per finished job, so a crash loses at most the job in flight.

Tables:
- `jobs`: one row per finished job (its key, its description, the checkpoint's facts,
  provenance, seconds);
- `metrics`: one row per (job, metric): value, and for quantized jobs the paired
  full-precision value, delta and its CI;
- `arrays`: float64 arrays a later job needs (a baseline's per-window losses, or its per-document
  lm-eval results), so a resumed study never recomputes a finished baseline;
- `failures`: the checkpoints whose last attempt failed (missing revision, OOM, unsupported model), with
  why; cleared when the checkpoint next succeeds;
- `claims`: which run is working on which checkpoint, until when (`claims.py`: runs sharing a store split the
  work);
- `fits`: one row per fitted scaling law (study, law, method, group size): parameters with
  CIs, goodness of fit and provenance as JSON text (non-finite numbers stored as null); the rest of the
  fit's key (eval, metric, symmetric, GPTQ options) and its censoring live in the provenance (`key`,
  `censoring`), so stores written before them open unchanged;
- `estimates`: the estimate, bootstrap draws and held-out errors of each law fitted to each set of points, keyed
  by a digest of the points, the options and the fitting code (`fit/estimate.py`), so a report, gate or fit
  over unchanged results reuses them instead of refitting.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ptq_eval.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_key TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    facts TEXT NOT NULL,
    provenance TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    job_key TEXT NOT NULL REFERENCES jobs(job_key),
    metric TEXT NOT NULL,
    value REAL,
    fp_value REAL,
    delta REAL,
    ci_low REAL,
    ci_high REAL,
    n INTEGER,
    PRIMARY KEY (job_key, metric)
);
CREATE TABLE IF NOT EXISTS arrays (
    job_key TEXT NOT NULL REFERENCES jobs(job_key),
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_key, name)
);
CREATE TABLE IF NOT EXISTS failures (
    checkpoint TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    checkpoint TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fits (
    fit_key TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    law TEXT NOT NULL,
    method TEXT,
    group_size INTEGER,
    params TEXT NOT NULL,
    goodness TEXT NOT NULL,
    provenance TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS estimates (
    digest TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""
DEFAULT_STORE_DIR = Path("runs")
BUSY_SECONDS = 60  # how long a connection waits for another process's lock
FIT_JSON = ("params", "goodness", "provenance")
FIT_KEY = ("eval", "metric", "symmetric", "options")  # columns read from a fit's provenance
JOB_COLUMNS = ["job_key", "job", "facts", "provenance", "seconds", "finished_at"]


def store_path(store: str | Path | None, study_name: str) -> Path:
    """The store a study's results are kept in: the one given, or `runs/<study name>.sqlite`."""
    return Path(store) if store else DEFAULT_STORE_DIR / f"{study_name}.sqlite"


def existing_store(study_file: str | Path, store: str | Path | None, study_name: str) -> Path:
    """The study's store, which must exist: reading never creates an empty one."""
    path = store_path(store, study_name)
    if not path.is_file():
        raise StoreError(f"no store at {path}: run `ptq-eval run {study_file}` first, or pass --store")
    return path


def json_ready(value):
    """The value with NaN and infinities (at any depth of dicts and lists) as None: strict JSON."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json(value) -> str:
    """JSON text with non-finite numbers as null (readable by SQLite's json functions)."""
    return json.dumps(json_ready(value), sort_keys=True)


@dataclass(frozen=True)
class MetricRow:
    metric: str
    value: float
    n: int
    fp_value: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class Store:
    """A study's results on disk; several runs may share one file (WAL mode)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a store file; give a file path (e.g. runs/x.sqlite)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"{self.path}: cannot create its folder ({error})") from None
        self._db = sqlite3.connect(self.path, timeout=BUSY_SECONDS)
        try:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(jobs)")]
            if tables and columns != JOB_COLUMNS:
                raise StoreError(
                    f"{self.path}: an SQLite database of something else (tables: {', '.join(sorted(tables))}), not a "
                    "ptq-eval store; it is left untouched: give another --store path"
                )
            self._create_tables()
        except sqlite3.OperationalError as error:
            self._db.close()
            why = (
                f"another process held it locked for {BUSY_SECONDS} s"
                if "locked" in str(error)
                else "is the file or its folder read-only?"
            )
            raise StoreError(f"{self.path}: cannot open the store ({error}); {why}") from None
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise StoreError(
                f"{self.path}: not a ptq-eval store ({error}); it is left untouched: give another --store path"
            ) from None

    def _create_tables(self) -> None:
        """WAL mode and the schema. SQLite answers a journal-mode switch that races another process opening the
        same new file with 'database is locked' at once, without waiting: retried here for as long as a busy
        connection would wait."""
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def finished(self, job_keys: Iterable[str]) -> set[str]:
        """Which of these jobs already have results."""
        keys = list(job_keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0] for row in self._db.execute(f"SELECT job_key FROM jobs WHERE job_key IN ({marks})", chunk)
            )
        return found

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it lands, or (disk full, read-only file) none of it, with a clear error."""
        try:
            with self._db:
                yield self._db
        except sqlite3.OperationalError as error:
            raise StoreError(
                f"cannot write to the store {self.path}: {error}; everything stored before is intact (nothing of "
                "this job was written): free space or make the file writable, then run again to resume"
            ) from None

    def save(
        self,
        job_key: str,
        job: dict,
        facts: dict,
        provenance: dict,
        seconds: float,
        metrics: list[MetricRow],
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write one finished job atomically (replacing an earlier result for the same key)."""
        finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._writing():
            self._db.execute("DELETE FROM metrics WHERE job_key = ?", (job_key,))
            self._db.execute("DELETE FROM arrays WHERE job_key = ?", (job_key,))
            self._db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job_key,
                    json.dumps(job, sort_keys=True),
                    json.dumps(facts, sort_keys=True),
                    json.dumps(provenance, sort_keys=True),
                    seconds,
                    finished_at,
                ),
            )
            self._db.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(job_key, m.metric, m.value, m.fp_value, m.delta, m.ci_low, m.ci_high, m.n) for m in metrics],
            )
            self._db.executemany(
                "INSERT INTO arrays VALUES (?, ?, ?)",
                [
                    (job_key, name, np.asarray(values, dtype=np.float64).tobytes())
                    for name, values in (arrays or {}).items()
                ],
            )

    def inputs(self, job_keys: Iterable[str]) -> dict[str, dict | None]:
        """What each stored job was computed from (`inputs` in its provenance; None if it recorded none)."""
        wanted = set(job_keys)
        rows = self._db.execute("SELECT job_key, json_extract(provenance, '$.inputs') FROM jobs").fetchall()
        return {key: (json.loads(text) if text else None) for key, text in rows if key in wanted}

    def record_failure(self, checkpoint: str, reason: str) -> None:
        with self._writing():
            self._db.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?)",
                (checkpoint, reason, time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            )

    def clear_failure(self, checkpoint: str) -> None:
        with self._writing():
            self._db.execute("DELETE FROM failures WHERE checkpoint = ?", (checkpoint,))

    def failures(self, checkpoints: Iterable[str]) -> dict[str, str]:
        """checkpoint → why its last attempt failed, for these checkpoints."""
        wanted = set(checkpoints)
        rows = self._db.execute("SELECT checkpoint, reason FROM failures").fetchall()
        return {checkpoint: reason for checkpoint, reason in rows if checkpoint in wanted}

    def arrays(self, job_key: str) -> dict[str, np.ndarray]:
        """Every array stored for a job, by name."""
        rows = self._db.execute("SELECT name, data FROM arrays WHERE job_key = ?", (job_key,)).fetchall()
        return {name: np.frombuffer(data, dtype=np.float64) for name, data in rows}

    def frame(self, job_keys: Iterable[str] | None = None) -> pd.DataFrame:
        """Tidy table: one row per (job, metric), with the job description and facts as columns."""
        query = (
            "SELECT j.job_key, j.job, j.facts, j.provenance, j.seconds, m.metric, m.value, m.fp_value, "
            "m.delta, m.ci_low, m.ci_high, m.n FROM jobs j JOIN metrics m USING (job_key)"
        )
        rows = self._db.execute(query).fetchall()
        wanted = None if job_keys is None else set(job_keys)
        records = []
        for key, job, facts, provenance, seconds, metric, value, fp_value, delta, low, high, n in rows:
            if wanted is not None and key not in wanted:
                continue
            record = {"job_key": key, **json.loads(job), **json.loads(facts)}
            record.update(
                metric=metric,
                value=value,
                fp_value=fp_value,
                delta=delta,
                delta_ci_low=low,
                delta_ci_high=high,
                n=n,
                seconds=seconds,
                provenance=provenance,
            )
            records.append(record)
        return pd.DataFrame.from_records(records)

    def save_fit(
        self,
        fit_key: str,
        study: str,
        law: str,
        method: str | None,
        group_size: int | None,
        params: dict,
        goodness: dict,
        provenance: dict,
    ) -> None:
        """Write one fitted law (replacing an earlier fit with the same key)."""
        created_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        row = (fit_key, study, law, method, None if group_size is None else int(group_size))
        with self._writing():
            self._db.execute(
                "INSERT OR REPLACE INTO fits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, _json(params), _json(goodness), _json(provenance), created_at),
            )

    def fits(self, study: str | None = None) -> pd.DataFrame:
        """Stored fits, one row each, with the JSON columns decoded and the key and censoring of the provenance
        as columns (None for fits saved before they were recorded)."""
        query, args = "SELECT * FROM fits", ()
        if study is not None:
            query, args = query + " WHERE study = ?", (study,)
        frame = pd.read_sql_query(query + " ORDER BY fit_key", self._db, params=args)
        for column in FIT_JSON:
            frame[column] = frame[column].map(json.loads)
        key = frame.provenance.map(lambda provenance: provenance.get("key", {}))  # {}: a fit saved before keys
        for name in FIT_KEY:
            frame[name] = key.map(lambda found, name=name: found.get(name))
        frame["censoring"] = frame.provenance.map(lambda provenance: provenance.get("censoring"))
        return frame.astype({"group_size": "Int64"})

    def estimate_record(self, digest: str) -> dict | None:
        """A stored estimate (`save_estimate_record`), or None."""
        row = self._db.execute("SELECT record FROM estimates WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else json.loads(row[0])

    def save_estimate_record(self, digest: str, record: dict) -> None:
        """Keep an estimate for the next reader; a store that cannot be written (read-only, full) only costs
        that reader a refit, so the error is not raised."""
        created_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO estimates VALUES (?, ?, ?)", (digest, _json(record), created_at)
                )
        except sqlite3.OperationalError:
            pass


@dataclass
class MergeSummary:
    copied: int = 0  # jobs new to the target
    identical: int = 0  # jobs the target already had, with the same inputs and numbers
    failures: int = 0  # failed-checkpoint records copied


def _job_record(db: sqlite3.Connection, key: str) -> tuple:
    """What must agree for two stores' copies of a job to be the same result: its inputs and every number."""
    inputs = db.execute("SELECT json_extract(provenance, '$.inputs') FROM jobs WHERE job_key = ?", (key,)).fetchone()
    metrics = db.execute("SELECT * FROM metrics WHERE job_key = ? ORDER BY metric", (key,)).fetchall()
    arrays = db.execute("SELECT name, data FROM arrays WHERE job_key = ? ORDER BY name", (key,)).fetchall()
    return inputs, metrics, arrays


def _differs(a: tuple, b: tuple) -> str:
    return ["inputs", "metrics", "stored arrays"][next(i for i in range(3) if a[i] != b[i])]


def merge_stores(target: Store, sources: Iterable[str | Path]) -> MergeSummary:
    """Copy every job of the source stores (e.g. job-array shards) into `target`, in one transaction.

    Idempotent: a job the target (or an earlier source) already has with the same inputs (weights, tokenizer, texts)
    and the same numbers is skipped. A job stored with other inputs or other numbers is a conflict: nothing is
    written and the error names it. Failed-checkpoint records are copied too.
    """
    summary, seen = MergeSummary(), {}
    opened = []
    try:
        for source in sources:
            path = Path(source)
            if not path.is_file():
                raise StoreError(f"{path}: no such store to merge")
            if path.resolve() == target.path.resolve():
                raise StoreError(f"{path}: is the target store itself; give the shard stores and --into another file")
            opened.append(Store(path))
        target_keys = {row[0] for row in target._db.execute("SELECT job_key FROM jobs")}
        copies: list[tuple[Store, str]] = []
        for store in opened:
            for (key,) in store._db.execute("SELECT job_key FROM jobs ORDER BY job_key").fetchall():
                record = _job_record(store._db, key)
                if key in seen or key in target_keys:
                    other = seen.get(key) or (_job_record(target._db, key), target.path)
                    if other[0] != record:
                        raise StoreError(
                            f"cannot merge {store.path}: job {key} ({_job_label(store._db, key)}) has other "
                            f"{_differs(record, other[0])} than in {other[1]}; nothing was merged (compute it again "
                            "in one of them, or leave that store out)"
                        )
                    summary.identical += 1
                    continue
                seen[key] = (record, store.path)
                copies.append((store, key))
        with target._writing():
            for store, key in copies:
                _copy_job(store._db, target._db, key)
            summary.copied = len(copies)
            for store in opened:
                for checkpoint, reason, failed_at in store._db.execute("SELECT * FROM failures").fetchall():
                    target._db.execute(
                        "INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (checkpoint, reason, failed_at)
                    )
                    summary.failures += 1
    finally:
        for store in opened:
            store.close()
    return summary


def _job_label(db: sqlite3.Connection, key: str) -> str:
    job = json.loads(db.execute("SELECT job FROM jobs WHERE job_key = ?", (key,)).fetchone()[0])
    quant = "full precision" if job["method"] == "none" else f"{job['method']} {job['bits']}-bit g{job['group_size']}"
    return f"{job['checkpoint']} {quant} {job['eval']}"


def _copy_job(source: sqlite3.Connection, target: sqlite3.Connection, key: str) -> None:
    job = source.execute("SELECT * FROM jobs WHERE job_key = ?", (key,)).fetchone()
    target.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)", job)
    metrics = source.execute("SELECT * FROM metrics WHERE job_key = ?", (key,)).fetchall()
    target.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)", metrics)
    arrays = source.execute("SELECT * FROM arrays WHERE job_key = ?", (key,)).fetchall()
    target.executemany("INSERT INTO arrays VALUES (?, ?, ?)", arrays)
