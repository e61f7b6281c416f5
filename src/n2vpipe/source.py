"""Noticing an input that was replaced after it was ingested.

Snakemake reruns a rule when an input is newer than its outputs, but a copy that
keeps timestamps (``cp -p``, ``rsync -a``) can put different content behind an
older mtime. So the identity of every ingested input is recorded beside its
results, in ``results/{acq}/source.json``: size, mtime, ctime, inode and a cheap
content digest (the file's size, its first and last 64 KiB and 16 blocks of
4 KiB spread over it; for a folder of planes, the names, sizes and digests of its
files). The digest is recomputed only when the stat fields change, so an
untouched input costs one ``stat`` per run, and a file whose ctime changed but
whose content did not (``chmod``, a ``touch`` back to the old time) is not taken
for a new one.

Standard library only: the workflow checks identities at parse time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD_FILE = "source.json"
KEPT_ON_WITHDRAWAL = (RECORD_FILE, "logs")
EDGE_BYTES = 64 * 1024
SAMPLE_BLOCKS = 16
SAMPLE_BYTES = 4096
PLANE_EDGE_BYTES = 4096
"""Per plane file of a folder input, the head and tail sampled (folders hold thousands of files)."""


def stat_key(path: Path) -> list[int]:
    """The stat fields that change when a file is rewritten or replaced: size, mtime, ctime, inode."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def file_digest(path: Path, edge_bytes: int = EDGE_BYTES, blocks: int = SAMPLE_BLOCKS) -> str:
    """A cheap content digest of one file: its size, first and last ``edge_bytes`` and ``blocks``
    blocks of :data:`SAMPLE_BYTES` spread evenly between them."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    offsets = [0, max(0, size - edge_bytes)] + [size * (i + 1) // (blocks + 1) for i in range(blocks)]
    with open(path, "rb") as handle:
        for offset, length in zip(offsets, [edge_bytes, edge_bytes] + [SAMPLE_BYTES] * blocks, strict=True):
            handle.seek(offset)
            digest.update(handle.read(length))
    return digest.hexdigest()


@dataclass(frozen=True)
class SourceIdentity:
    """What an input was when it was looked at: per file, its stat key and content digest."""

    path: str
    files: Mapping[str, tuple[list[int], str]]

    @property
    def digest(self) -> str:
        """The content digest of the whole input (file names, sizes and digests)."""
        summary = sorted((name, key[0], digest) for name, (key, digest) in self.files.items())
        return hashlib.blake2b(json.dumps(summary).encode(), digest_size=16).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"path": self.path, "digest": self.digest,
                "files": {name: {"stat": key, "digest": digest} for name, (key, digest) in self.files.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceIdentity:
        """Inverse of :meth:`to_dict`."""
        return cls(data["path"], {name: (entry["stat"], entry["digest"]) for name, entry in data["files"].items()})


def identify(path: Path, known: SourceIdentity | None = None) -> SourceIdentity:
    """The identity of the input at ``path`` (a file, or a folder of plane files), reusing the digests
    in ``known`` for files whose stat key has not changed."""
    path = Path(path)
    cache = dict(known.files) if known is not None and known.path == str(path) else {}
    if path.is_dir():
        members = {entry.name: Path(entry.path) for entry in os.scandir(path) if entry.is_file()}
        edge, blocks = PLANE_EDGE_BYTES, 0
    else:
        members = {"": path}
        edge, blocks = EDGE_BYTES, SAMPLE_BLOCKS
    files = {}
    for name, member in sorted(members.items()):
        key = stat_key(member)
        cached = cache.get(name)
        files[name] = (key, cached[1] if cached and cached[0] == key else file_digest(member, edge, blocks))
    return SourceIdentity(str(path), files)


def read_record(acquisition_results: Path) -> SourceIdentity | None:
    """The identity recorded for an acquisition's input, or ``None`` when there is none (or it is unreadable)."""
    try:
        return SourceIdentity.from_dict(json.loads((Path(acquisition_results) / RECORD_FILE).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def write_record(acquisition_results: Path, identity: SourceIdentity) -> None:
    """Record ``identity`` for an acquisition (atomically; an unchanged record is left as it is)."""
    target = Path(acquisition_results) / RECORD_FILE
    text = json.dumps(identity.to_dict(), indent=1, sort_keys=True) + "\n"
    if target.exists() and target.read_text() == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def replaced_since_recorded(acquisition_results: Path, input_path: Path) -> tuple[bool, SourceIdentity]:
    """Whether the input's content differs from the recorded identity (``False`` when none is recorded),
    and its current identity."""
    recorded = read_record(acquisition_results)
    current = identify(input_path, recorded)
    replaced = recorded is not None and recorded.digest != current.digest
    return replaced, current


def withdraw_results(acquisition_results: Path) -> list[str]:
    """Remove everything made from an acquisition's old input (raw copy, model, partial outputs,
    denoised outputs, QC), keeping its logs and source record; returns the names removed."""
    removed = []
    for entry in sorted(Path(acquisition_results).iterdir()):
        if entry.name in KEPT_ON_WITHDRAWAL:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed
