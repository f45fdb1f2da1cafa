"""Versioned artifacts: round trip, checksum verification, no unsafe names, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.artifacts import MANIFEST, copy_newest, latest_version, load_artifact, save_artifact
from recsys.types import ArtifactError


def test_round_trip_preserves_tensors_files_and_metadata(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    art = save_artifact(
        tmp_path, "model", tensors={"w": arr}, files={"notes.txt": b"hi"}, metadata={"a": 1}
    )
    loaded = load_artifact(art.path)
    assert loaded.version == art.version
    assert loaded.metadata == {"a": 1}
    np.testing.assert_array_equal(loaded.tensors()["w"], arr)
    assert loaded.file("notes.txt").read_bytes() == b"hi"
    manifest = json.loads((art.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"tensors.safetensors", "notes.txt"}
    assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())


def test_tampered_file_fails_checksum(tmp_path: Path) -> None:
    art = save_artifact(tmp_path, "model", tensors={"w": np.ones(4, dtype=np.float32)})
    target = art.path / "tensors.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(art.path)


def test_missing_file_and_missing_manifest_are_errors(tmp_path: Path) -> None:
    art = save_artifact(tmp_path, "model", files={"a.bin": b"1"})
    (art.path / "a.bin").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(art.path)
    with pytest.raises(ArtifactError, match="no manifest"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 200])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactError):
        save_artifact(tmp_path, name, files={"a": b""})
    with pytest.raises(ArtifactError):
        save_artifact(tmp_path, "ok", files={name: b""})


def test_latest_version_picks_newest_complete_version(tmp_path: Path) -> None:
    save_artifact(tmp_path, "m", files={"a": b"1"}, version="20200101T000000Z-aaaaaa")
    newest = save_artifact(tmp_path, "m", files={"a": b"2"}, version="20250101T000000Z-bbbbbb")
    (tmp_path / "m" / ".20990101T000000Z-cccccc.tmp-1").mkdir()  # an interrupted write
    assert latest_version(tmp_path, "m") == newest.path
    with pytest.raises(ArtifactError, match="no versions"):
        latest_version(tmp_path, "other")


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    save_artifact(tmp_path, "m", files={"a": b"1"}, version="v1")
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(tmp_path, "m", files={"a": b"2"}, version="v1")


def test_copy_newest_makes_a_fresh_root_of_only_the_newest_versions(tmp_path: Path) -> None:
    source, root = tmp_path / "source", tmp_path / "root"
    for name in ("policy-a", "policy-b", "retrieval"):
        save_artifact(source, name, files={"x": b"1"}, version="v1")
        save_artifact(source, name, files={"x": b"2"}, version="v2")
    (root / "stale").mkdir(parents=True)
    out = copy_newest(source, root, ["policy-a", "retrieval"])
    assert out == root
    assert sorted(p.name for p in root.iterdir()) == ["policy-a", "retrieval"]
    assert [p.name for p in (root / "policy-a").iterdir()] == ["v2"]
    assert load_artifact(root / "retrieval" / "v2").version == "v2"
    with pytest.raises(ArtifactError, match="policy-c"):
        copy_newest(source, root, ["policy-c"])
