"""The child side of the process bridge (:mod:`recsys.policy.training.bridge`).

This file runs *by path* under the environment's own interpreter (``python bridge_child.py
--spec module:factory``), next to whatever old ``gym``, ``numpy<2`` or pinned simulator code
that environment needs. That is why it imports only the standard library and numpy, never
torch or the rest of ``recsys``, and stays valid on Python >= 3.7 with numpy 1.x or 2.x (no
walrus, no ``match``, no ``zip(strict=...)``; annotations are never evaluated; tested under
Python 3.7.16 with numpy 1.17.5, 3.8.18 with 1.24.4 and 3.11 with 2.4). The parent
also imports it, for the wire format and for :func:`flatten`, so both sides agree by
construction.

Protocol (version :data:`PROTOCOL`): the parent writes requests to the child's stdin, the
child answers each on its stdout. A message is ``u32 little-endian header length | header |
payload``: the header is a UTF-8 JSON object whose ``"arrays"`` lists ``[name, dtype, shape]``
(``dtype`` is numpy's ``dtype.str`` of a bool, integer or float type, e.g. ``"<f4"``) and the
payload is the arrays' C-order bytes, in that order. Nothing is ever pickled: a reply can only
produce plain numeric arrays and JSON values.

- The child starts by importing ``module``, calling ``factory(worker_index)`` and answering
  ``{"op": "ready", "batch_size", "slate_size", "pid", "python", "numpy", ...}``, with the
  env's ``item_table`` array when it declares one (protocol 2: sent once, so observations
  need only candidate ids), or ``{"op": "error", "stage", "error"}`` (then it exits).
- ``{"op": "reset", "seed"}`` → ``{"op": "obs"}`` with the observation's arrays;
  ``{"op": "step"}`` with array ``slates`` ``[B, S]`` → ``{"op": "step"}`` with the step's
  arrays; ``{"op": "close"}`` → ``{"op": "closed"}``, then the child exits. An exception in
  the environment's code answers ``{"op": "error", "error"}`` and the child keeps serving.
- EOF on stdin (the parent closed the pipe or died) ends the child.

The environment's own ``print`` output goes to stderr: the protocol has stdout to itself.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import struct
import sys
import traceback
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from io import BufferedReader, BufferedWriter

#: Wire-format version, checked by the parent on ``ready`` (2: ``ready`` may carry the env's
#: ``item_table``).
PROTOCOL = 2
#: Largest header accepted (it holds only names, dtypes, shapes and a few scalars).
MAX_HEADER_BYTES = 1 << 20
#: Most dimensions an array may have.
MAX_NDIM = 8
_LENGTH = struct.Struct("<I")
#: Plain numeric dtypes only: bool, signed and unsigned ints, floats (numpy's ``dtype.str``).
_DTYPE = re.compile(r"^[<>|=][biuf](1|2|4|8|16)$")


class ProtocolError(Exception):
    """A message that does not follow the wire format (or a value it cannot carry)."""


def as_plain_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a contiguous bool/int/float array, or a :class:`ProtocolError` naming it."""
    arr = np.ascontiguousarray(np.asarray(value))
    if not _DTYPE.match(arr.dtype.str):
        raise ProtocolError(
            f"{name!r} is a {arr.dtype} array; only bool, integer and float arrays cross the bridge"
        )
    if arr.ndim > MAX_NDIM:
        raise ProtocolError(f"{name!r} has {arr.ndim} dimensions (at most {MAX_NDIM})")
    return arr


def flatten(result: Any, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """The named arrays of an environment's reply: a mapping (or a namedtuple, through
    ``_asdict``) of arrays, nested ones named ``outer.inner``; ``None`` values are left out."""
    if hasattr(result, "_asdict"):
        result = result._asdict()
    if not hasattr(result, "items"):
        what = prefix.rstrip(".") or "the reply"
        raise ProtocolError(f"{what} must be a dict of arrays, got a {type(result).__name__}")
    out = []
    for key, value in result.items():
        if not isinstance(key, str):
            raise ProtocolError(f"keys must be strings, got {key!r}")
        if value is None:
            continue
        name = prefix + key
        if hasattr(value, "_asdict") or isinstance(value, dict):
            out.extend(flatten(value, name + "."))
        else:
            out.append((name, as_plain_array(name, value)))
    return out


def encode(header: Mapping[str, Any], arrays: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
    """A message as buffers to write in order (the arrays' own memory, not copies)."""
    head = dict(header)
    head["arrays"] = [[name, arr.dtype.str, list(arr.shape)] for name, arr in arrays]
    raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes is over {MAX_HEADER_BYTES}")
    parts: list[Any] = [_LENGTH.pack(len(raw)) + raw]
    parts.extend(arr.reshape(-1).view(np.uint8).data for _, arr in arrays if arr.nbytes)
    return parts


def header_length(prefix: bytes) -> int:
    """The header length announced by a message's 4-byte prefix (checked)."""
    (length,) = _LENGTH.unpack(prefix)
    if not 0 < length <= MAX_HEADER_BYTES:
        raise ProtocolError(f"announced header length {length} is out of range")
    return int(length)


def decode_header(raw: bytes) -> tuple[dict[str, Any], list[tuple[str, Any, tuple[int, ...]]], int]:
    """Parse a header: ``(header, [(name, dtype, shape)], payload bytes)``, all checked."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("header must be a JSON object with an 'op'")
    specs = []
    total = 0
    entries = header.pop("arrays", [])
    if not isinstance(entries, list):
        raise ProtocolError("'arrays' must be a list")
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise ProtocolError(f"array entry {entry!r} is not [name, dtype, shape]")
        name, dtype, shape = entry
        if not isinstance(name, str) or not isinstance(dtype, str) or not _DTYPE.match(dtype):
            raise ProtocolError(f"array {name!r} has an unsupported dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise ProtocolError(f"array {name!r} has an invalid shape {shape!r}")
        dt = np.dtype(dtype)
        count = 1
        for d in shape:
            count *= d
        specs.append((name, dt, tuple(shape)))
        total += count * dt.itemsize
    return header, specs, total


def split_payload(
    payload: Any, specs: Sequence[tuple[str, Any, tuple[int, ...]]]
) -> dict[str, np.ndarray]:
    """The arrays of a payload (views of ``payload``; writable when it is a bytearray)."""
    arrays = {}
    offset = 0
    for name, dt, shape in specs:
        count = 1
        for d in shape:
            count *= d
        arrays[name] = np.frombuffer(payload, dtype=dt, count=count, offset=offset).reshape(shape)
        offset += count * dt.itemsize
    return arrays


def _read_exact(stream: BufferedReader, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            if got == 0:
                raise EOFError
            raise ProtocolError("stream ended inside a message")
        got += k
    return buf


def read_message(stream: BufferedReader) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One message from a blocking binary stream (:class:`EOFError` at a clean end)."""
    length = header_length(bytes(_read_exact(stream, _LENGTH.size)))
    try:
        header, specs, total = decode_header(bytes(_read_exact(stream, length)))
        payload = _read_exact(stream, total)
    except EOFError as exc:
        raise ProtocolError("stream ended inside a message") from exc
    return header, split_payload(payload, specs)


def write_message(
    stream: BufferedWriter, header: Mapping[str, Any], arrays: Sequence[tuple[str, np.ndarray]] = ()
) -> None:
    """One message to a blocking binary stream, flushed."""
    for part in encode(header, arrays):
        stream.write(part)
    stream.flush()


# ---- the server --------------------------------------------------------------------------


def _load(spec: str, worker_index: int) -> Any:
    """Import ``module:factory`` and build worker ``worker_index``'s env; a one-line error
    (raised as :class:`_StartError` with its stage) when that fails."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise _StartError("spec", f"--env must be module:factory, got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise _StartError("import", f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise _StartError(
            "import", f"importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for name in attr.split("."):
        if not hasattr(obj, name):
            raise _StartError("import", f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, name)
    if not callable(obj):
        raise _StartError("import", f"{spec} is a {type(obj).__name__}, not a callable")
    try:
        env = obj(worker_index)
    except Exception as exc:
        raise _StartError(
            "factory", f"{spec}({worker_index}) raised {type(exc).__name__}: {exc}"
        ) from exc
    missing = [
        name for name in ("batch_size", "slate_size", "reset", "step") if not hasattr(env, name)
    ]
    if missing:
        raise _StartError(
            "env",
            f"{spec}({worker_index}) returned a {type(env).__name__} without "
            f"{', '.join(missing)}: a bridged env needs batch_size, slate_size, reset(seed) and "
            "step(slates), returning dicts of arrays",
        )
    return env


class _StartError(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _protocol_streams() -> tuple[BufferedReader, BufferedWriter]:
    """Take stdin and stdout for the protocol; the env's own prints go to stderr and its
    reads from stdin see an empty file."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto_in, proto_out


#: Characters of a traceback sent with an error (its end: where it was raised).
TRACEBACK_CHARS = 4000


def _error_reply(exc: BaseException, stage: str | None = None) -> dict[str, Any]:
    """An ``error`` answer: the one-line error and the end of its traceback (also printed to
    stderr, for the env's log). A start failure's traceback is its cause's (the user's code)."""
    shown = exc.__cause__ if isinstance(exc, _StartError) else exc
    text = ""
    if shown is not None:
        text = "".join(traceback.format_exception(type(shown), shown, shown.__traceback__))
    sys.stderr.write(text)
    sys.stderr.flush()
    reply: dict[str, Any] = {
        "op": "error",
        "error": str(exc) if isinstance(exc, _StartError) else f"{type(exc).__name__}: {exc}",
        "traceback": text[-TRACEBACK_CHARS:],
    }
    if stage is not None:
        reply["stage"] = stage
    return reply


def serve(env: Any, proto_in: BufferedReader, proto_out: BufferedWriter) -> None:
    """Answer requests until ``close`` or EOF."""
    while True:
        try:
            header, arrays = read_message(proto_in)
        except EOFError:
            return
        op = header["op"]
        if op == "close":
            try:
                if hasattr(env, "close"):
                    env.close()
            finally:
                write_message(proto_out, {"op": "closed"})
            return
        try:
            if op == "reset":
                seed = header.get("seed")
                reply = flatten(env.reset(None if seed is None else int(seed)))
                answer: dict[str, Any] = {"op": "obs"}
            elif op == "step":
                reply = flatten(env.step(arrays["slates"]))
                answer = {"op": "step"}
            else:
                raise ProtocolError(f"unknown request {op!r}")
        except Exception as exc:
            write_message(proto_out, _error_reply(exc))
            continue
        write_message(proto_out, answer, reply)


def main(argv: Sequence[str]) -> int:
    """``bridge_child.py --spec module:factory [--worker-index N] [--path DIR]...``."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve a slate env over stdin/stdout.")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--path", action="append", default=[])
    args = parser.parse_args(list(argv))
    # Ctrl-C reaches the whole process group; the parent decides when this child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Run by path, Python put this file's directory first on sys.path: its sibling modules
    # (config.py, envs.py, ...) must not shadow the user's.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    for path in reversed(args.path):
        if path not in sys.path:
            sys.path.insert(0, path)
    proto_in, proto_out = _protocol_streams()
    try:
        env = _load(args.spec, args.worker_index)
        ready = {
            "op": "ready",
            "protocol": PROTOCOL,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "numpy": np.__version__,
            "batch_size": int(env.batch_size),
            "slate_size": int(env.slate_size),
        }
        table = getattr(env, "item_table", None)
        arrays = [] if table is None else [("item_table", as_plain_array("item_table", table))]
    except _StartError as exc:
        write_message(proto_out, _error_reply(exc, exc.stage))
        return 1
    except Exception as exc:  # e.g. a batch_size that is not an int
        write_message(proto_out, _error_reply(exc, "env"))
        return 1
    write_message(proto_out, ready, arrays)
    try:
        serve(env, proto_in, proto_out)
    except (BrokenPipeError, ProtocolError) as exc:
        sys.stderr.write(f"bridge child: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
