"""Unit tests of the completeness check for arriving acquisitions (n2vpipe.discover)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from n2vpipe.discover import ArrivalRule, arrival_pending, canonical, last_change, split_arrived


def test_arrival_rule_defaults_take_everything(tmp_path: Path) -> None:
    rule = ArrivalRule.from_mapping({})
    assert rule == ArrivalRule(0.0, "")
    path = tmp_path / "a.tif"
    path.write_bytes(b"x")
    assert arrival_pending("a", path, rule) is None


def test_recently_changed_file_waits_until_old_enough(tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"x")
    rule = ArrivalRule(min_age_seconds=60)
    reason = arrival_pending("a", path, rule)
    assert reason is not None and "min_age_seconds=60" in reason
    assert arrival_pending("a", path, rule, now=time.time() + 61) is None


def test_old_mtime_is_not_enough_when_the_file_just_landed(tmp_path: Path) -> None:
    # cp -p / rsync -a keep the source's old mtime; the ctime still says "just now".
    path = tmp_path / "a.tif"
    path.write_bytes(b"x")
    os.utime(path, (1_000_000, 1_000_000))
    assert last_change(path) >= time.time() - 5
    assert arrival_pending("a", path, ArrivalRule(min_age_seconds=60)) is not None


def test_folder_is_as_recent_as_its_newest_file(tmp_path: Path) -> None:
    folder = tmp_path / "a.ome.tif"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "part.tif").write_bytes(b"x")
    now = time.time()
    assert last_change(folder) >= now - 5
    rule = ArrivalRule(min_age_seconds=30)
    assert arrival_pending("a", folder, rule, now=now + 31) is None
    (folder / "sub" / "late.tif").write_bytes(b"y")
    assert arrival_pending("a", folder, rule, now=now + 1) is not None


def test_marker_file_is_required_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "sample.ome.tif"
    path.write_bytes(b"x")
    rule = ArrivalRule.from_mapping({"marker_suffix": ".done", "min_age_seconds": 0})
    reason = arrival_pending("sample", path, rule)
    assert reason is not None and "sample.done" in reason
    (tmp_path / "sample.done").touch()
    assert arrival_pending("sample", path, rule) is None


def test_split_arrived_separates_complete_from_pending(tmp_path: Path) -> None:
    old, new = tmp_path / "old.tif", tmp_path / "new.tif"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    rule = ArrivalRule(min_age_seconds=10)
    # Pretend "old" landed long ago by judging it from the future, "new" from now.
    arrived, pending = split_arrived({"old": old}, rule, now=time.time() + 20)
    assert arrived == {"old": old} and pending == {}
    arrived, pending = split_arrived({"old": old, "new": new}, rule)
    assert arrived == {} and set(pending) == {"old", "new"}


def test_canonical_sorts_keys_recursively_and_keeps_values() -> None:
    value = {"b": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": 3}
    result = canonical(value)
    assert result == value
    assert repr(result) == "{'a': 3, 'b': {'x': [{'c': 2, 'd': 1}], 'y': 1}}"
