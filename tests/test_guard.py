"""The results lock and the identity of inputs, on real files and real processes."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from n2vpipe.lock import LOCK_FILE, ResultsLocked, acquire_results_lock, holder_of
from n2vpipe.source import identify, read_record, replaced_since_recorded, withdraw_results, write_record


def test_a_held_lock_refuses_a_second_run_naming_the_holder(tmp_path: Path, results_lock_holder) -> None:
    results = tmp_path / "results"
    holder = results_lock_holder(results)
    with pytest.raises(ResultsLocked, match=rf"pid {holder.pid} on .*started .* in {os.getcwd()}"):
        acquire_results_lock(results)
    assert holder_of(results).pid == holder.pid


def test_a_killed_holder_leaves_no_lock_but_is_reported(tmp_path: Path, results_lock_holder) -> None:
    results = tmp_path / "results"
    holder = results_lock_holder(results)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert holder_of(results) is None
    lock = acquire_results_lock(results)
    assert lock.previous is not None and lock.previous.pid == holder.pid
    lock.release()
    assert (results / LOCK_FILE).read_text() == "", "a clean release clears the holder record"
    assert acquire_results_lock(results).previous is None


def _write(path: Path, seed: int, size: int = 300_000) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes())
    return path


def test_a_replacement_with_an_older_mtime_is_noticed(tmp_path: Path) -> None:
    results = tmp_path / "results" / "acq"
    source = _write(tmp_path / "acq.tif", seed=0)
    replaced, identity = replaced_since_recorded(results, source)
    assert not replaced, "nothing recorded yet"
    write_record(results, identity)
    old_times = (source.stat().st_atime, source.stat().st_mtime - 3600)
    other = _write(tmp_path / "other.tif", seed=1)
    os.utime(other, old_times)
    shutil.copy2(other, source)  # cp -p: other content, same size, an older mtime
    assert source.stat().st_mtime < read_record(results).files[""][0][1] / 1e9
    replaced, _ = replaced_since_recorded(results, source)
    assert replaced


def test_unchanged_content_is_not_replaced_even_when_its_ctime_changes(tmp_path: Path) -> None:
    results = tmp_path / "results" / "acq"
    source = _write(tmp_path / "acq.tif", seed=0)
    write_record(results, identify(source))
    os.chmod(source, 0o600)  # ctime changes, content does not
    replaced, identity = replaced_since_recorded(results, source)
    assert not replaced
    write_record(results, identity)
    assert read_record(results).files[""][0] == identity.files[""][0], "the new stat key is recorded"
    record_mtime = (results / "source.json").stat().st_mtime_ns
    time.sleep(0.01)
    write_record(results, identity)
    assert (results / "source.json").stat().st_mtime_ns == record_mtime, "an unchanged record is not rewritten"


def test_a_replaced_plane_in_a_folder_is_noticed(tmp_path: Path) -> None:
    results = tmp_path / "results" / "stack"
    folder = tmp_path / "stack"
    folder.mkdir()
    for i in range(3):
        _write(folder / f"plane{i}.tif", seed=i, size=20_000)
    write_record(results, identify(folder))
    assert not replaced_since_recorded(results, folder)[0]
    stat = (folder / "plane1.tif").stat()
    _write(folder / "plane1.tif", seed=9, size=20_000)
    os.utime(folder / "plane1.tif", (stat.st_atime, stat.st_mtime))
    assert replaced_since_recorded(results, folder)[0]


def test_withdrawal_keeps_logs_and_the_record(tmp_path: Path) -> None:
    results = tmp_path / "acq"
    for name in ("raw.ome.zarr/0", "model", "logs", ".model.partial"):
        (results / name).mkdir(parents=True)
    (results / "denoised.tif").write_bytes(b"x")
    (results / "source.json").write_text("{}")
    assert withdraw_results(results) == [".model.partial", "denoised.tif", "model", "raw.ome.zarr"]
    assert sorted(p.name for p in results.iterdir()) == ["logs", "source.json"]
