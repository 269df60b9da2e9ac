"""Leases on a store's checkpoint groups, so that runs sharing one store split the work instead of each doing all
of it. A run claims a checkpoint before working on it, renews its claims from a background thread while it works,
and releases them when done. A claim whose holder stopped renewing expires and is taken over; one held by a
process of this machine that no longer exists (killed, crashed) is taken over at once.

SQLite's locking is reliable on a local disk only: runs on several machines use Ray or job-array shards
(`executors.py`) with their own stores, merged afterwards (`store.merge_stores`).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ptq_eval.errors import StoreError

DEFAULT_LEASE_SECONDS = 300.0


def _process_gone(owner: str) -> bool:
    """Whether the claim's holder was a process of this machine that has ended."""
    host, _, rest = owner.partition("|")
    pid = rest.partition("|")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Claims:
    """This run's claims on checkpoints of the store at `path` (own connection: the heartbeat is a thread)."""

    def __init__(self, path: str | Path, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}|{os.getpid()}|{uuid.uuid4().hex[:8]}"
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self.lost: set[str] = set()  # claims that lapsed while this run held them
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def take(self, checkpoint: str) -> str | None:
        """Claim the checkpoint; None when it is now ours, else who holds it (`host|pid|run`)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO claims VALUES (?, ?, ?) ON CONFLICT(checkpoint) DO UPDATE SET owner = excluded.owner, "
                "expires = excluded.expires WHERE claims.expires < ? OR claims.owner = excluded.owner",
                (checkpoint, self.owner, now + self.lease_seconds, now),
            )
            holder = self._db.execute("SELECT owner FROM claims WHERE checkpoint = ?", (checkpoint,)).fetchone()[0]
            if holder != self.owner and _process_gone(holder):
                self._db.execute(
                    "UPDATE claims SET owner = ?, expires = ? WHERE checkpoint = ? AND owner = ?",
                    (self.owner, now + self.lease_seconds, checkpoint, holder),
                )
                holder = self._db.execute("SELECT owner FROM claims WHERE checkpoint = ?", (checkpoint,)).fetchone()[0]
            if holder != self.owner:
                return holder
            self._held.add(checkpoint)
            return None

    def release(self, checkpoint: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM claims WHERE checkpoint = ? AND owner = ?", (checkpoint, self.owner))
            self._held.discard(checkpoint)

    def renew(self) -> None:
        """Extend every claim this run holds by a lease."""
        with self._lock:
            expires = time.time() + self.lease_seconds
            for checkpoint in list(self._held):
                renewed = self._db.execute(
                    "UPDATE claims SET expires = ? WHERE checkpoint = ? AND owner = ?",
                    (expires, checkpoint, self.owner),
                ).rowcount
                if not renewed:  # it lapsed and another run took it over
                    self._held.discard(checkpoint)
                    self.lost.add(checkpoint)

    def check(self, checkpoint: str) -> None:
        """Refuse to go on with a checkpoint whose claim this run has lost (never two writers of one result)."""
        if checkpoint in self.lost:
            raise StoreError(
                f"{checkpoint}: this run's claim on it lapsed (not renewed within {self.lease_seconds:.0f} s) and "
                "another run took it over; that run writes its results: run again afterwards to finish the rest"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            try:
                self.renew()
            except sqlite3.Error:  # a busy store: the next beat tries again, well within the lease
                pass

    def __enter__(self) -> Claims:
        self._heartbeat = threading.Thread(target=self._beat, name="ptq-eval-claims", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        for checkpoint in list(self._held):
            self.release(checkpoint)
        self._db.close()
