"""Versioned artifact directories: tensors in safetensors, metadata in JSON, sha256 per file.

Layout::

    <root>/<name>/<version>/manifest.json
    <root>/<name>/<version>/<file>...

``manifest.json`` records the artifact name, version, creation time, free-form metadata and
the sha256 and size of every file. Loading verifies every checksum before anything is read,
and only safetensors and JSON are ever parsed: nothing is unpickled, so an artifact from an
untrusted place cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from recsys.types import ArtifactError

MANIFEST = "manifest.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(kind: str, value: str) -> str:
    if not _SAFE_NAME.match(value) or value in {".", ".."}:
        raise ArtifactError(f"invalid artifact {kind} {value!r}: use letters, digits, . _ -")
    return value


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed so large index files don't load into memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory."""

    name: str
    version: str
    path: Path
    metadata: dict[str, Any]
    files: dict[str, str]

    def tensors(self, file: str = "tensors.safetensors") -> dict[str, np.ndarray[Any, Any]]:
        """Arrays stored in one safetensors file of this artifact."""
        if file not in self.files:
            raise ArtifactError(f"artifact {self.name}/{self.version} has no file {file!r}")
        arrays: dict[str, np.ndarray[Any, Any]] = load_file(str(self.path / file))
        return arrays

    def file(self, name: str) -> Path:
        """Path of one verified file (e.g. a FAISS index)."""
        if name not in self.files:
            raise ArtifactError(f"artifact {self.name}/{self.version} has no file {name!r}")
        return self.path / name


def new_version() -> str:
    """A sortable version id: UTC timestamp plus a short random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()


def save_artifact(
    root: Path,
    name: str,
    *,
    tensors: Mapping[str, np.ndarray[Any, Any]] | None = None,
    files: Mapping[str, bytes] | None = None,
    metadata: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> Artifact:
    """Write a new artifact version atomically (temp dir, then rename) and return it."""
    _check_name("name", name)
    version = _check_name("version", version or new_version())
    final = Path(root) / name / version
    if final.exists():
        raise ArtifactError(f"artifact {name}/{version} already exists at {final}")
    tmp = final.with_name(f".{version}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    if tensors:
        contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(contiguous, str(tmp / "tensors.safetensors"))
    for fname, data in (files or {}).items():
        if fname == MANIFEST:
            raise ArtifactError(f"{MANIFEST} is reserved")
        (tmp / _check_name("file name", fname)).write_bytes(data)
    checksums = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())
    }
    manifest = {
        "name": name,
        "version": version,
        "created_ts": time.time(),
        "metadata": dict(metadata or {}),
        "files": checksums,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    tmp.rename(final)
    return load_artifact(final)


def load_artifact(path: Path) -> Artifact:
    """Load and verify one artifact version directory (every file's sha256 must match)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {path}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        name, version = str(manifest["name"]), str(manifest["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"malformed {manifest_path}: {exc}") from exc
    for fname, entry in files.items():
        fpath = path / _check_name("file name", fname)
        if not fpath.is_file():
            raise ArtifactError(f"artifact {name}/{version} is missing {fname}")
        actual = sha256_file(fpath)
        if actual != entry.get("sha256"):
            raise ArtifactError(
                f"checksum mismatch for {fname} in {name}/{version}: "
                f"manifest {entry.get('sha256')}, file {actual}"
            )
    return Artifact(
        name=name,
        version=version,
        path=path,
        metadata=dict(manifest.get("metadata", {})),
        files={f: e["sha256"] for f, e in files.items()},
    )


def latest_version(root: Path, name: str) -> Path:
    """Directory of the newest complete version of ``name`` under ``root``."""
    base = Path(root) / _check_name("name", name)
    versions = (
        sorted(
            p
            for p in base.glob("*")
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )
        if base.is_dir()
        else []
    )
    if not versions:
        raise ArtifactError(f"no versions of artifact {name!r} under {root}")
    return versions[-1]


def copy_newest(source: Path, root: Path, names: Sequence[str]) -> Path:
    """A fresh artifact root ``root`` holding only the newest version of each of ``names``
    under ``source`` (what an experiment serves, and nothing it could confuse with what it
    trains); raises :class:`ArtifactError` naming the first one ``source`` lacks."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    for name in names:
        src = latest_version(source, name)
        shutil.copytree(src, root / name / src.name)
    return root
