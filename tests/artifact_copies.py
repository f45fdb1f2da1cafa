"""Publishing copies of artifacts in tests: a newer version of the same policy (what a
retrain produces) and a corrupt one (a flipped byte, as a bad disk or a partial copy would)."""

from __future__ import annotations

import shutil
from pathlib import Path

from recsys.artifacts import load_artifact, save_artifact


def republish(path: Path, version: str) -> Path:
    """The artifact at ``path`` published again under ``version`` (checksums recomputed)."""
    art = load_artifact(path)
    files = {n: art.file(n).read_bytes() for n in art.files if n != "tensors.safetensors"}
    return save_artifact(
        path.parent.parent,
        art.name,
        tensors=art.tensors(),
        files=files,
        metadata=art.metadata,
        version=version,
    ).path


def corrupt_copy(path: Path, version: str) -> Path:
    """A copy of the artifact at ``path`` as ``version`` with one byte of its tensors flipped
    (its manifest still claims the old checksum)."""
    dst = path.parent / version
    shutil.copytree(path, dst)
    tensors = dst / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    return dst
