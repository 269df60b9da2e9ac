import numpy as np

from ptq_eval.store import MetricRow, Store


def test_save_finished_frame_and_arrays(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.save(
            "k1",
            {"checkpoint": "a", "bits": 4},
            {"tokens": 10},
            {"torch": "x"},
            1.5,
            [MetricRow("loss", 3.2, 100, 3.0, 0.2, 0.1, 0.3)],
            {"window_sums": np.array([1.0, 2.5])},
        )
        assert store.finished(["k1", "k2"]) == {"k1"}
        frame = store.frame()
        assert frame.loc[0, "checkpoint"] == "a" and frame.loc[0, "delta"] == 0.2 and frame.loc[0, "tokens"] == 10
        assert {name: a.tolist() for name, a in store.arrays("k1").items()} == {"window_sums": [1.0, 2.5]}


def test_resaving_a_job_replaces_its_rows(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        for value in (1.0, 2.0):
            store.save("k", {"checkpoint": "a"}, {}, {}, 0.0, [MetricRow("loss", value, 1)])
        frame = store.frame()
        assert len(frame) == 1 and frame.loc[0, "value"] == 2.0


def test_a_failed_job_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    try:
        store.save("k", {}, {}, {}, 0.0, [MetricRow("loss", 1.0, 1), MetricRow("loss", 2.0, 1)])
    except Exception:
        pass
    assert store.finished(["k"]) == set()
    store.close()


def test_two_handles_share_one_store(tmp_path):
    first, second = Store(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite")
    first.save("k", {}, {}, {}, 0.0, [MetricRow("loss", 1.0, 1)])
    assert second.finished(["k"]) == {"k"}
    first.close()
    second.close()


def test_fits_are_saved_replaced_and_read_back(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        for value in (1.0, 2.0):
            params = {"gamma_D": {"value": value, "ci_low": float("nan"), "ci_high": float("inf")}}
            store.save_fit("demo/kumar/rtn/-1", "demo", "kumar", "rtn", -1, params, {"r2": 0.9}, {"seed": 0})
        store.save_fit("demo/base/None/None", "demo", "base", None, None, {}, {}, {})
        store.save_fit("other/kumar/rtn/-1", "other", "kumar", "rtn", -1, {}, {}, {})
        fits = store.fits("demo").set_index("law")
        assert list(fits.index) == ["base", "kumar"] and len(store.fits()) == 3
        assert fits.params["kumar"] == {"gamma_D": {"value": 2.0, "ci_low": None, "ci_high": None}}
        assert fits.group_size["kumar"] == -1 and fits.group_size.isna()["base"]
        assert fits["eval"].isna().all() and fits.censoring.isna().all()  # saved without a key: an older ptq-eval


def test_a_full_disk_stops_with_a_clear_error_and_nothing_half_written(tmp_path):
    import pytest

    from ptq_eval.errors import StoreError

    with Store(tmp_path / "s.sqlite") as store:
        store.save("k1", {"checkpoint": "a"}, {}, {}, 0.0, [MetricRow("loss", 1.0, 1)])
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: the file may not grow
        big = {"window_sums": np.arange(200_000, dtype=np.float64)}
        with pytest.raises(StoreError, match=r"cannot write to the store .*: database or disk is full; everything"):
            store.save("k2", {"checkpoint": "b"}, {}, {}, 0.0, [MetricRow("loss", 2.0, 1)], big)
    with Store(tmp_path / "s.sqlite") as store:
        assert store.finished(["k1", "k2"]) == {"k1"} and store.arrays("k2") == {}
        assert store._db.execute("SELECT COUNT(*) FROM metrics WHERE job_key = 'k2'").fetchone()[0] == 0


def test_a_read_only_store_stops_with_a_clear_error(tmp_path):
    import sqlite3

    import pytest

    from ptq_eval.errors import StoreError

    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.save("k1", {"checkpoint": "a"}, {}, {}, 0.0, [MetricRow("loss", 1.0, 1)])
    store = Store(path)
    store._db.close()
    store._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # as a file the process may not write
    with pytest.raises(StoreError, match=r"readonly database; everything stored before is intact"):
        store.save("k2", {"checkpoint": "b"}, {}, {}, 0.0, [MetricRow("loss", 2.0, 1)])
    assert store.finished(["k1", "k2"]) == {"k1"}
    store.close()
