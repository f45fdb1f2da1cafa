"""An environment that needs other dependency versions, run in its own process.

A team's simulator is often old code pinned to its own ``gym``, ``numpy<2`` or Python, which
cannot be imported next to torch and this project. :class:`ProcessEnv` runs it under *its*
interpreter (a virtualenv's ``bin/python``) in a child process and presents it here as a
:class:`~recsys.policy.training.envs.BatchSlateEnv`. Only plain numeric arrays cross: the
child (:mod:`~recsys.policy.training.bridge_child`, stdlib and numpy only, Python >= 3.7)
imports ``module:factory``, builds ``factory(worker_index)`` and answers ``reset`` and
``step`` over its stdin/stdout pipes, one round trip per batched step of ``[B, S]`` slates,
with a length-prefixed header (JSON: names, dtypes, shapes) and the raw bytes. Nothing is
pickled, so a reply can neither run code here nor depend on either side's library versions.

What the environment in the child implements (no recsys import needed): ``batch_size``,
``slate_size``, ``reset(seed) -> dict`` with ``user_features`` ``[B, du]``,
``item_features`` ``[B, C, di]`` and optionally ``candidate_ids``, ``candidate_mask``,
``is_ad`` ``[B, C]``; ``step(slates [B, S]) -> dict`` with ``next_obs`` (a dict like
``reset``'s), ``done`` ``[B]`` and optionally ``response`` (a dict of per-slot ``[B, S]``
signals named as :data:`~recsys.policy.batch.SIGNAL_NAMES`; absent ones are 0), ``reward``
``[B]`` (split over the clicked slots, else slot 0, as for a Gymnasium env:
:func:`~recsys.policy.training.envs.credit_env_reward`) or
``env_reward`` ``[B, S]``, ``hidden_reward``, ``valid`` and ``truncated`` ``[B]``: the fields
of :class:`~recsys.policy.training.envs.EnvStep`. (Namedtuples work too.) :class:`ArraySlateEnv`
applies the same conversion in process, to try such an env where its dependencies allow.

An env whose items never change may declare them once as an ``item_table`` attribute
(``[num_items, di]``, row ``i`` for catalog id ``i``; :mod:`~recsys.policy.training.item_table`):
the child sends it with its ``ready`` message, and its observations then carry
``candidate_ids`` and no ``item_features``, which this side gathers from the table. Sending
both is refused as ambiguous.

Failures are :class:`BridgeError` naming the env, with the child's traceback or the end of
its stderr: an interpreter that cannot start, a module that cannot be imported or a factory
that raises (:class:`BridgeStartError`, also a
:class:`~recsys.policy.training.custom_env.CustomEnvError`, so the CLI reports it as a usage
error), an exception in ``reset``/``step`` (the child keeps serving), a child that dies, a
call that takes longer than ``call_timeout_s`` or a reply that is malformed (the child is
killed; this env is then unusable). The child is always stopped: by :meth:`ProcessEnv.close`,
the context manager, a finalizer when the env is garbage collected or the interpreter exits,
and, should this process die, by the end of its stdin. A :class:`ProcessEnv` pickles as its
spec (for Ray) and starts its child on first use where it is unpickled; usually the factory
is what travels: ``--env module:factory@PYTHON`` (``ImportedEnvFactory`` with ``python``).
POSIX only (the pipes are polled with :mod:`selectors`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from recsys.policy.batch import NUM_SIGNALS, SIGNAL_NAMES, SlateObs, SlateResponse
from recsys.policy.training import bridge_child as wire
from recsys.policy.training.custom_env import CustomEnvError
from recsys.policy.training.envs import EnvStep, credit_env_reward
from recsys.policy.training.item_table import (
    ITEM_TABLE_ATTR,
    check_item_table,
    gather_item_features,
)
from recsys.types import FloatArray, IntArray, RecsysError

__all__ = [
    "CHILD_SCRIPT",
    "ArraySlateEnv",
    "BridgeError",
    "BridgeStartError",
    "MalformedReplyError",
    "ProcessEnv",
    "obs_from_arrays",
    "step_from_arrays",
]

logger = logging.getLogger(__name__)

#: The script the child runs, by path, under the env's interpreter.
CHILD_SCRIPT = Path(wire.__file__).resolve()
#: Lines of the child's stderr kept for error messages.
STDERR_TAIL_LINES = 30
#: Variables not passed to the child: they point at *this* interpreter's libraries.
_PARENT_ONLY_VARS = ("PYTHONPATH", "PYTHONHOME")

ArrayMap = Mapping[str, npt.NDArray[Any]]


class BridgeError(RecsysError, RuntimeError):
    """A bridged environment failed: it raised, its process died, timed out or answered
    something malformed. The message names the env and shows the child's side."""


class BridgeStartError(BridgeError, CustomEnvError):
    """The bridged environment could not be started (interpreter, import, factory)."""


class MalformedReplyError(ValueError):
    """An environment's arrays do not form an observation or a step (names, shapes)."""


# ---- plain arrays -> slate-env types ---------------------------------------------------

_OBS_FIELDS = ("user_features", "item_features", "candidate_ids", "candidate_mask", "is_ad")
_STEP_FIELDS = ("done", "reward", "env_reward", "hidden_reward", "valid", "truncated")


def _field(
    fields: dict[str, npt.NDArray[Any]],
    name: str,
    shape: tuple[int, ...],
    dtype: type[np.generic],
    where: str = "",
) -> npt.NDArray[Any] | None:
    """Pop ``name`` as ``dtype`` with exactly ``shape`` (``None`` when absent)."""
    if name not in fields:
        return None
    arr = np.asarray(fields.pop(name))
    if arr.shape != shape:
        dims = ", ".join(str(d) for d in shape)
        raise MalformedReplyError(f"{where}{name} must be [{dims}], got shape {list(arr.shape)}")
    return arr.astype(dtype, copy=False)


def _reject_unknown(fields: Mapping[str, Any], where: str, expected: Sequence[str]) -> None:
    if fields:
        raise MalformedReplyError(
            f"unexpected {where or 'field'}{'s' if len(fields) > 1 else ''} "
            f"{', '.join(sorted(fields))} (expected {', '.join(expected)})"
        )


def obs_from_arrays(
    arrays: ArrayMap,
    batch_size: int,
    where: str = "",
    item_table: FloatArray | None = None,
) -> SlateObs:
    """A :class:`~recsys.policy.batch.SlateObs` from an observation's named arrays (checked).

    ``candidate_ids`` default to the candidate indices, masks to "all valid" and "no ads".
    With an ``item_table`` (a checked one, the env's) the observation holds ``candidate_ids``
    instead of ``item_features``, which are gathered from the table.
    """
    fields = dict(arrays)
    b = batch_size
    if "user_features" not in fields:
        raise MalformedReplyError(f"{where}user_features is missing (an observation needs it)")
    if item_table is not None:
        return _table_obs(fields, b, where, item_table)
    if "item_features" not in fields:
        raise MalformedReplyError(
            f"{where}item_features is missing (an observation needs it, unless the env "
            f"declares an {ITEM_TABLE_ATTR} and sends candidate_ids)"
        )
    user = np.asarray(fields["user_features"])
    items = np.asarray(fields["item_features"])
    if user.ndim != 2 or items.ndim != 3:
        raise MalformedReplyError(
            f"{where}user_features must be [B, du] and item_features [B, C, di], got shapes "
            f"{list(user.shape)} and {list(items.shape)}"
        )
    c = int(items.shape[1])
    uf = _field(fields, "user_features", (b, int(user.shape[1])), np.float32, where)
    itf = _field(fields, "item_features", (b, c, int(items.shape[2])), np.float32, where)
    ids = _field(fields, "candidate_ids", (b, c), np.int64, where)
    if ids is None:
        ids = np.broadcast_to(np.arange(c, dtype=np.int64), (b, c)).copy()
    mask = _field(fields, "candidate_mask", (b, c), np.bool_, where)
    ads = _field(fields, "is_ad", (b, c), np.bool_, where)
    assert uf is not None  # present, checked above
    assert itf is not None
    _reject_unknown({where + k: v for k, v in fields.items()}, "", _OBS_FIELDS)
    return SlateObs(uf, itf, ids, mask, ads)


def _table_obs(
    fields: dict[str, npt.NDArray[Any]], b: int, where: str, item_table: FloatArray
) -> SlateObs:
    """:func:`obs_from_arrays` of an env with an item table: ids in, features gathered."""
    if "item_features" in fields:
        raise MalformedReplyError(
            f"{where}item_features sent by an env that declared an {ITEM_TABLE_ATTR}: which "
            "one is meant is ambiguous; send candidate_ids only, or declare no table"
        )
    if "candidate_ids" not in fields:
        raise MalformedReplyError(
            f"{where}candidate_ids is missing (an env with an {ITEM_TABLE_ATTR} sends the "
            "candidates' catalog ids)"
        )
    user = np.asarray(fields["user_features"])
    ids_raw = np.asarray(fields["candidate_ids"])
    if user.ndim != 2 or ids_raw.ndim != 2:
        raise MalformedReplyError(
            f"{where}user_features must be [B, du] and candidate_ids [B, C], got shapes "
            f"{list(user.shape)} and {list(ids_raw.shape)}"
        )
    if ids_raw.dtype.kind not in "iu":
        raise MalformedReplyError(
            f"{where}candidate_ids must be integer catalog ids, got dtype {ids_raw.dtype}"
        )
    c = int(ids_raw.shape[1])
    uf = _field(fields, "user_features", (b, int(user.shape[1])), np.float32, where)
    ids = _field(fields, "candidate_ids", (b, c), np.int64, where)
    mask = _field(fields, "candidate_mask", (b, c), np.bool_, where)
    ads = _field(fields, "is_ad", (b, c), np.bool_, where)
    assert uf is not None  # present, checked above
    assert ids is not None
    _reject_unknown({where + k: v for k, v in fields.items()}, "", _OBS_FIELDS)
    try:
        itf = gather_item_features(item_table, ids, mask, f"{where}candidate_ids")
    except ValueError as exc:
        raise MalformedReplyError(str(exc)) from None
    return SlateObs(uf, itf, ids, mask, ads)


def step_from_arrays(
    arrays: ArrayMap, batch_size: int, slate_size: int, item_table: FloatArray | None = None
) -> EnvStep:
    """An :class:`~recsys.policy.training.envs.EnvStep` from a step's named arrays (checked):
    ``next_obs.*``, ``done``, optionally ``response.<signal>``, ``reward`` or ``env_reward``,
    ``hidden_reward``, ``valid``, ``truncated``; ``item_table`` as for
    :func:`obs_from_arrays`."""
    b, s = batch_size, slate_size
    fields = dict(arrays)
    obs = {
        k.removeprefix("next_obs."): fields.pop(k)
        for k in list(fields)
        if k.startswith("next_obs.")
    }
    if not obs:
        raise MalformedReplyError("a step must return next_obs (a dict like reset's)")
    next_obs = obs_from_arrays(obs, b, "next_obs.", item_table)
    signals = np.zeros((b, s, NUM_SIGNALS), dtype=np.float32)
    for k, name in enumerate(SIGNAL_NAMES):
        value = _field(fields, f"response.{name}", (b, s), np.float32)
        if value is not None:
            signals[..., k] = value
    response = SlateResponse.from_signals(signals)
    done = _field(fields, "done", (b,), np.bool_)
    if done is None:
        raise MalformedReplyError("a step must return done [B]")
    env_reward = _field(fields, "env_reward", (b, s), np.float32)
    reward = _field(fields, "reward", (b,), np.float32)
    if reward is not None:
        if env_reward is not None:
            raise MalformedReplyError("a step returns reward [B] or env_reward [B, S], not both")
        env_reward = credit_env_reward(reward, signals[..., 0])
    hidden = _field(fields, "hidden_reward", (b,), np.float32)
    valid = _field(fields, "valid", (b,), np.bool_)
    truncated = _field(fields, "truncated", (b,), np.bool_)
    expected = ["next_obs", *_STEP_FIELDS, *(f"response.{n}" for n in SIGNAL_NAMES)]
    _reject_unknown(fields, "", expected)
    return EnvStep(response, next_obs, done, hidden, env_reward, valid, truncated)


class ArraySlateEnv:
    """An env written for the bridge (dicts of arrays), in this process, as a
    :class:`~recsys.policy.training.envs.BatchSlateEnv`: the same flattening and checks as
    :class:`ProcessEnv`, without the process (to test such an env where it imports),
    including its ``item_table`` if it declares one."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.batch_size = int(env.batch_size)
        self.slate_size = int(env.slate_size)
        table = getattr(env, ITEM_TABLE_ATTR, None)
        #: The env's static item table (read-only float32), or ``None``.
        self.item_table = None if table is None else check_item_table(table)

    def reset(self, seed: int | None = None) -> SlateObs:
        """Reset the wrapped env and convert its observation."""
        arrays = {k: v.copy() for k, v in wire.flatten(self.env.reset(seed))}
        return obs_from_arrays(arrays, self.batch_size, item_table=self.item_table)

    def step(self, slates: IntArray) -> EnvStep:
        """Step the wrapped env with a copy of ``slates`` and convert its reply."""
        raw = self.env.step(np.array(slates, dtype=np.int64))
        arrays = {k: v.copy() for k, v in wire.flatten(raw)}
        return step_from_arrays(arrays, self.batch_size, self.slate_size, self.item_table)


# ---- the child process -------------------------------------------------------------------


class _ChannelError(Exception):
    """The channel broke: ``kind`` is ``died``, ``timeout`` or ``malformed``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _drain(stream: IO[bytes], tail: deque[str], name: str) -> None:
    """Keep the child's stderr flowing (a full pipe would block it) and its last lines."""
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            tail.append(line)
            logger.info("%s: %s", name, line)
    except (OSError, ValueError):  # closed under us on shutdown
        pass


class _Channel:
    """A running child: its process, deadline-bounded I/O on its pipes, its stderr tail."""

    def __init__(self, command: list[str], env: dict[str, str], name: str) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)  # a write never blocks past its deadline
        self._readable = selectors.DefaultSelector()
        self._readable.register(self._out, selectors.EVENT_READ)
        self._writable = selectors.DefaultSelector()
        self._writable.register(self._in, selectors.EVENT_WRITE)
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._drainer = threading.Thread(
            target=_drain, args=(self.proc.stderr, self.tail, name), daemon=True
        )
        self._drainer.start()
        self._stopped = False

    @property
    def pid(self) -> int:
        """The child's process id."""
        return int(self.proc.pid)

    def _send(self, parts: Sequence[Any], deadline: float) -> None:
        for part in parts:
            view = memoryview(part).cast("B")
            while len(view):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _ChannelError("timeout", "sending the request")
                if not self._writable.select(left):
                    continue
                try:
                    view = view[os.write(self._in, view) :]
                except BlockingIOError:
                    continue
                except OSError as exc:  # EPIPE: the child is gone
                    raise _ChannelError("died", f"writing to it failed ({exc})") from exc

    def _read(self, n: int, deadline: float) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _ChannelError("timeout", "waiting for the answer")
            if not self._readable.select(left):
                continue
            k = os.readv(self._out, [view[got:]])
            if k == 0:
                raise _ChannelError("died", "its stdout closed")
            got += k
        return buf

    def receive(self, deadline: float) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        """The next message, before ``deadline`` (``time.monotonic()``)."""
        try:
            length = wire.header_length(bytes(self._read(4, deadline)))
            header, specs, total = wire.decode_header(bytes(self._read(length, deadline)))
            return header, wire.split_payload(self._read(total, deadline), specs)
        except wire.ProtocolError as exc:
            raise _ChannelError("malformed", str(exc)) from exc

    def request(
        self,
        header: Mapping[str, Any],
        arrays: Sequence[tuple[str, npt.NDArray[Any]]],
        timeout: float,
    ) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        """Send one request and wait for its answer, ``timeout`` seconds at most in all."""
        deadline = time.monotonic() + timeout
        self._send(wire.encode(header, arrays), deadline)
        return self.receive(deadline)

    def stderr_tail(self, wait_s: float = 1.0) -> str:
        """The child's last stderr lines (waiting ``wait_s`` for a dead child's last words)."""
        if self.proc.poll() is not None:
            self._drainer.join(wait_s)
        return "\n".join(self.tail)

    def exit_description(self, wait_s: float = 2.0) -> str:
        """How the child ended, e.g. ``killed by SIGKILL`` (waiting ``wait_s`` for it)."""
        try:
            code = self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Ask the child to close its env and exit; kill it if it has not within ``grace_s``."""
        if self._stopped:
            return
        if self.proc.poll() is None:
            try:
                self.request({"op": "close"}, [], grace_s)
                self.proc.wait(grace_s)
            except (_ChannelError, subprocess.TimeoutExpired, OSError, ValueError):
                pass
        self.kill()

    def kill(self) -> None:
        """Kill the child (if it still runs) and release the pipes; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._drainer.join(1.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._readable.close()
        self._writable.close()


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())


def _stderr_note(channel: _Channel) -> str:
    """The end of a failed child's stderr, for an error message."""
    tail = channel.stderr_tail()
    if not tail.strip():
        return "; it wrote nothing to stderr"
    return f"; its stderr ends with:\n{_indent(tail)}"


class ProcessEnv:
    """``module:factory`` run by another interpreter, as a
    :class:`~recsys.policy.training.envs.BatchSlateEnv` (see the module docstring).

    ``python``: the interpreter (default this one), e.g. the simulator's
    ``.venv/bin/python``, used as given (a virtualenv's ``python`` is a link that must not be
    resolved). ``search_path``: directories put first on the child's ``sys.path`` (where the
    module lives); ``PYTHONPATH`` and ``PYTHONHOME`` are not passed on (they describe this
    interpreter), the rest of the environment is. The child starts here and now, so
    ``batch_size`` and ``slate_size`` are known and a broken env fails at once.
    ``start_timeout_s`` bounds import and construction, ``call_timeout_s`` every ``reset``
    and ``step``. ``item_table`` is the env's static item table when it declares one (sent
    once, when the child starts; ``None`` until then after unpickling).
    """

    def __init__(
        self,
        spec: str,
        *,
        python: str | os.PathLike[str] | None = None,
        search_path: Sequence[str] = (),
        worker_index: int = 0,
        start_timeout_s: float = 120.0,
        call_timeout_s: float = 300.0,
    ) -> None:
        self.spec = spec
        self.python = os.fspath(python) if python is not None else sys.executable
        self.search_path = tuple(os.path.abspath(p) for p in search_path)
        self.worker_index = int(worker_index)
        self.start_timeout_s = float(start_timeout_s)
        self.call_timeout_s = float(call_timeout_s)
        self.batch_size = 0
        self.slate_size = 0
        #: What the child reported when it started: pid, python, executable, numpy, ...
        self.child_info: dict[str, Any] = {}
        #: The env's static item table (read-only float32), or ``None``.
        self.item_table: FloatArray | None = None
        self._channel: _Channel | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._broken: str | None = None
        self._start()

    @property
    def name(self) -> str:
        """How errors name this env."""
        return f"bridged env {self.spec} (worker {self.worker_index}, {self.python})"

    @property
    def pid(self) -> int | None:
        """The running child's process id (``None`` when none runs)."""
        return None if self._channel is None else self._channel.pid

    def _start(self) -> None:
        command = [self.python, "-u", str(CHILD_SCRIPT), "--spec", self.spec]
        command += ["--worker-index", str(self.worker_index)]
        for path in self.search_path:
            command += ["--path", path]
        env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_VARS}
        try:
            channel = _Channel(command, env, f"{self.spec}[{self.worker_index}]")
        except OSError as exc:
            raise BridgeStartError(
                f"{self.name}: cannot start the interpreter {self.python!r}: {exc}"
            ) from None
        try:
            header, arrays = channel.receive(time.monotonic() + self.start_timeout_s)
        except _ChannelError as exc:
            if exc.kind == "timeout":
                message = f"did not start within {self.start_timeout_s:g} s"
            else:
                message = f"could not start ({channel.exit_description()}; {exc})"
            channel.kill()
            raise BridgeStartError(f"{self.name} {message}{_stderr_note(channel)}") from None
        if header.get("op") != "ready":
            channel.shutdown(1.0)
            detail = header.get("traceback") or channel.stderr_tail()
            raise BridgeStartError(
                f"{self.name}: {header.get('error', header)}"
                + (f"\n{_indent(detail)}" if detail else "")
            )
        if header.get("protocol") != wire.PROTOCOL:
            channel.shutdown(1.0)
            raise BridgeStartError(
                f"{self.name}: the child speaks protocol {header.get('protocol')}, this side "
                f"{wire.PROTOCOL} (an old bridge_child.py?)"
            )
        sizes = (int(header["batch_size"]), int(header["slate_size"]))
        if self.batch_size and (self.batch_size, self.slate_size) != sizes:
            channel.shutdown(1.0)
            raise BridgeError(
                f"{self.name}: restarted with (batch_size, slate_size) = {sizes}, was "
                f"{(self.batch_size, self.slate_size)}"
            )
        table = arrays.get(ITEM_TABLE_ATTR)
        try:
            item_table = None if table is None else check_item_table(table)
        except ValueError as exc:
            channel.shutdown(1.0)
            raise BridgeStartError(f"{self.name}: {exc}") from None
        self.batch_size, self.slate_size = sizes
        self.item_table = item_table
        self.child_info = {k: v for k, v in header.items() if k != "op"}
        self._channel = channel
        self._finalizer = weakref.finalize(self, channel.shutdown)

    def _call(
        self,
        what: str,
        expected: str,
        header: Mapping[str, Any],
        arrays: Sequence[tuple[str, npt.NDArray[Any]]] = (),
    ) -> dict[str, npt.NDArray[Any]]:
        """One request, its answer's arrays (an ``expected`` op); every failure as a
        :class:`BridgeError`. A call interrupted half-way (Ctrl-C) would leave its answer in
        the pipe for the next one to misread: that stops the child too."""
        if self._broken is not None:
            raise BridgeError(f"{self.name} cannot be used any more: {self._broken}")
        if self._channel is None:
            self._start()  # first use after unpickling
        channel = self._channel
        assert channel is not None
        try:
            reply, out = channel.request(header, arrays, self.call_timeout_s)
        except _ChannelError as exc:
            if exc.kind == "timeout":
                message = f"no answer to {what} within {self.call_timeout_s:g} s ({exc}); killed it"
            elif exc.kind == "died":
                ended = channel.exit_description()
                message = f"its process {channel.pid} died during {what} ({ended}; {exc})"
            else:
                message = f"malformed answer to {what}: {exc}; killed it"
            self._fail(message)
            raise BridgeError(f"{self.name}: {message}{_stderr_note(channel)}") from None
        except BaseException:
            self._fail(f"interrupted during {what}")
            raise
        if reply.get("op") == "error":
            raise BridgeError(
                f"{self.name}: {what} raised {reply.get('error')}\n"
                f"{_indent(str(reply.get('traceback', '')))}"
            )
        if reply.get("op") != expected:
            message = f"answered {what} with {reply.get('op')!r}, not {expected!r}; killed it"
            self._fail(message)
            raise BridgeError(f"{self.name}: {message}")
        return out

    def _fail(self, message: str) -> None:
        """The channel is unusable: kill the child (its state is unknown) and refuse calls."""
        self._broken = message
        if self._channel is not None:
            self._channel.kill()
        if self._finalizer is not None:
            self._finalizer()  # nothing left to stop: it only runs once, now
        self._channel = None

    def reset(self, seed: int | None = None) -> SlateObs:
        """Reset every row in the child (seeded when ``seed`` is given)."""
        seed = None if seed is None else int(seed)
        out = self._call("reset", "obs", {"op": "reset", "seed": seed})
        try:
            return obs_from_arrays(out, self.batch_size, item_table=self.item_table)
        except MalformedReplyError as exc:
            raise BridgeError(f"{self.name}: reset answered {exc}") from None

    def step(self, slates: IntArray) -> EnvStep:
        """Send the batch's slates ``[B, S]`` in one round trip; the step as an ``EnvStep``."""
        arr = np.ascontiguousarray(slates, dtype=np.int64)
        if arr.shape != (self.batch_size, self.slate_size):
            raise ValueError(
                f"slates must be [{self.batch_size}, {self.slate_size}], got {list(arr.shape)}"
            )
        out = self._call("step", "step", {"op": "step"}, [("slates", arr)])
        try:
            return step_from_arrays(out, self.batch_size, self.slate_size, self.item_table)
        except MalformedReplyError as exc:
            raise BridgeError(f"{self.name}: step answered {exc}") from None

    def close(self) -> None:
        """Close the env in the child and stop the child; later calls raise."""
        if self._finalizer is not None:
            self._finalizer()
        self._channel = None
        if self._broken is None:
            self._broken = "it was closed"

    def __enter__(self) -> ProcessEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """The spec only: where it is unpickled (a Ray worker) it starts its own child."""
        keys = ("spec", "python", "search_path", "worker_index", "start_timeout_s")
        state = {k: getattr(self, k) for k in keys}
        state.update(
            call_timeout_s=self.call_timeout_s,
            batch_size=self.batch_size,
            slate_size=self.slate_size,
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.child_info = {}
        self.item_table = None
        self._channel = None
        self._finalizer = None
        self._broken = None
