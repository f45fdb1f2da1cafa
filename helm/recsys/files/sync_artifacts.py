"""Mirror recsys artifact versions between an object store and a local artifact root.

    python sync_artifacts.py download s3://bucket/prefix/artifacts /data/artifacts [--every S]
    python sync_artifacts.py upload   s3://bucket/prefix/artifacts /data/artifacts

Shipped by the Helm chart (storage.type objectStore) and run with the recsys image's Python:
only pyarrow (a recsys dependency) and the standard library. The layout is recsys's:
``<root>/<name>/<version>/`` with ``manifest.json`` written last, and versions never change
once written. So only complete versions (with a manifest) that the other side lacks are
copied; a download lands in a hidden staging directory that is renamed into place (recsys
ignores dot-directories), and an upload sends the manifest after every other file, so a
reader never takes a half-copied version for a complete one.
"""

from __future__ import annotations

import argparse
import sys
import time

import pyarrow.fs as pafs

MANIFEST = "manifest.json"


def _versions(fs: pafs.FileSystem, root: str) -> set[tuple[str, str]]:
    """(name, version) of every complete version under ``root``."""
    found: set[tuple[str, str]] = set()
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return found
    for name in fs.get_file_info(pafs.FileSelector(root)):
        if name.type != pafs.FileType.Directory or name.base_name.startswith("."):
            continue
        for version in fs.get_file_info(pafs.FileSelector(name.path)):
            if version.type != pafs.FileType.Directory or version.base_name.startswith("."):
                continue
            manifest = fs.get_file_info(f"{version.path}/{MANIFEST}")
            if manifest.type == pafs.FileType.File:
                found.add((name.base_name, version.base_name))
    return found


def _copy_version(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Copy one version directory, manifest last."""
    files = [
        info
        for info in src_fs.get_file_info(pafs.FileSelector(src, recursive=True))
        if info.type == pafs.FileType.File
    ]
    files.sort(key=lambda info: info.base_name == MANIFEST)
    for info in files:
        rel = info.path[len(src) :].lstrip("/")
        target = f"{dst}/{rel}"
        dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(info.path, target, source_filesystem=src_fs, destination_filesystem=dst_fs)


def sync(direction: str, url: str, local_root: str) -> list[str]:
    """One mirror pass; returns the ``name/version`` entries copied."""
    remote_fs, remote_root = pafs.FileSystem.from_uri(url)
    local_fs = pafs.LocalFileSystem()
    local_root = local_root.rstrip("/")
    local_fs.create_dir(local_root, recursive=True)
    remote_root = remote_root.rstrip("/")
    copied: list[str] = []
    if direction == "download":
        for name, version in sorted(
            _versions(remote_fs, remote_root) - _versions(local_fs, local_root)
        ):
            staging = f"{local_root}/{name}/.{version}.sync"
            local_fs.delete_dir_contents(staging, missing_dir_ok=True)
            _copy_version(remote_fs, f"{remote_root}/{name}/{version}", local_fs, staging)
            local_fs.move(staging, f"{local_root}/{name}/{version}")
            copied.append(f"{name}/{version}")
    else:
        for name, version in sorted(
            _versions(local_fs, local_root) - _versions(remote_fs, remote_root)
        ):
            _copy_version(
                local_fs,
                f"{local_root}/{name}/{version}",
                remote_fs,
                f"{remote_root}/{name}/{version}",
            )
            copied.append(f"{name}/{version}")
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=["download", "upload"])
    parser.add_argument("url", help="object-store URI of the artifact root (pyarrow.fs)")
    parser.add_argument("local_root", help="local artifact root (RECSYS_ARTIFACTS__ROOT)")
    parser.add_argument(
        "--every", type=float, default=0.0, help="repeat every S seconds (0: one pass)"
    )
    args = parser.parse_args(argv)
    while True:
        try:
            for entry in sync(args.direction, args.url, args.local_root):
                print(f"{args.direction}: {entry}", flush=True)
        except OSError as exc:
            if args.every <= 0:
                print(f"sync_artifacts: {exc}", file=sys.stderr)
                return 1
            print(f"sync_artifacts: {exc}; retrying in {args.every:g} s", file=sys.stderr)
        if args.every <= 0:
            return 0
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
