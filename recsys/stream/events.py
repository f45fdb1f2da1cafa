"""Versioned wire codec for stream events (JSON, one object per message).

Every message carries ``"v"`` (schema version) and ``"type"`` (``"impression"`` or
``"feedback"``), so a consumer can refuse what it does not understand instead of guessing, and
a later version can change the layout without breaking readers that are still running.

An impression's candidate ids and user features travel as base64 of little-endian ``int32``
and ``float32`` arrays (``"candidates"``, ``"features"``; optional within v1): a few hundred
numbers per slate in a third of the bytes of JSON numbers, and exact.

Decoding is strict: a message that is not valid v1 raises :class:`EventDecodeError`. Consumers
catch it, skip the record and count it (a poison message must never stop the online updater).

Decoding is the consumers' hottest path (a record is decoded once per consumer, tens of
thousands a second), so it has two layers. :func:`decode_events` first parses every message
with msgspec into typed wire structs (parsing, type checks, bounds and base64 in C, no
intermediate dicts); a message it refuses, or whose values fail the few checks left in Python,
goes through the strict pure-Python decoder, which either accepts it (msgspec is the stricter
of the two, e.g. about ``1.0`` for an int) or raises with a precise message. The fast layer
never accepts a message the strict one refuses, and both build equal events.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from recsys.config import StreamSettings
from recsys.types import (
    Event,
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    PackedArray,
    ShadowSlate,
    SlateItem,
)

SCHEMA_VERSION = 1
"""Version written by :func:`encode_event`; the only one :func:`decode_event` accepts."""

IMPRESSION_TYPE = "impression"
FEEDBACK_TYPE = "feedback"
_INT64_LIMIT = 2**63


class EventDecodeError(ValueError):
    """Bytes from the stream are not a valid event of a known schema version."""


class EventStreamError(RuntimeError):
    """The stream backend is unreachable or misbehaving (not a problem with one event)."""


class EventPublishError(EventStreamError):
    """An event sink could not deliver events (broker unreachable, record rejected, timeout)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record no consumer can use (bad JSON, unknown schema version, missing ids, absurd
    values): kept, with where it came from and why, on the dead-letter topic."""

    partition: str
    offset: int
    reason: str
    payload: bytes


DeadLetterHandler = Callable[[DeadLetter], None]
"""Called by an event source for each record it skips (after counting it)."""


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """JSON with the original bytes in base64 (they may be anything, even invalid UTF-8)."""
    return json.dumps(
        {
            "partition": letter.partition,
            "offset": letter.offset,
            "reason": letter.reason,
            "payload": base64.b64encode(letter.payload).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode("utf-8")


def decode_dead_letter(data: bytes) -> DeadLetter:
    """Inverse of :func:`encode_dead_letter` (for tools that inspect the dead-letter topic)."""
    obj = json.loads(data)
    return DeadLetter(
        str(obj["partition"]), int(obj["offset"]), str(obj["reason"]),
        base64.b64decode(obj["payload"]),
    )  # fmt: skip


def topic_for(event: Event, settings: StreamSettings) -> str:
    """Topic an event belongs to: impressions and feedback live on separate topics."""
    if isinstance(event, ImpressionEvent):
        return settings.impressions_topic
    if isinstance(event, FeedbackEvent):
        return settings.feedback_topic
    raise TypeError(f"not an event: {type(event).__name__}")


def encode_event(event: Event) -> bytes:
    """Serialize an event to compact UTF-8 JSON with the schema version and a type tag.

    Raises ``ValueError`` for non-finite floats (JSON has no NaN/inf, and a NaN timestamp or
    propensity would poison every consumer downstream).
    """
    payload: dict[str, Any]
    if isinstance(event, ImpressionEvent):
        payload = {
            "v": SCHEMA_VERSION,
            "type": IMPRESSION_TYPE,
            "request_id": event.request_id,
            "user_id": event.user_id,
            "ts": float(event.ts),
            "model_version": event.model_version,
            "policy": event.policy,
            "session_id": event.session_id,
            "items": _encode_items(event.items),
        }
        if event.candidates:
            payload["candidates"] = _pack(event.candidates, _I4, "candidates")
        if event.features:
            payload["features"] = _pack(event.features, _F4, "features")
        if event.shadow is not None:
            payload["shadow"] = {
                "policy": event.shadow.policy,
                "model_version": event.shadow.model_version,
                "items": _encode_items(event.shadow.items),
            }
    elif isinstance(event, FeedbackEvent):
        payload = {
            "v": SCHEMA_VERSION,
            "type": FEEDBACK_TYPE,
            "request_id": event.request_id,
            "user_id": event.user_id,
            "item_id": int(event.item_id),
            "event": EventType(event.event).value,
            "value": float(event.value),
            "ts": float(event.ts),
        }
        if event.server_ts is not None:
            payload["server_ts"] = float(event.server_ts)
    else:
        raise TypeError(f"not an event: {type(event).__name__}")
    if not all(map(math.isfinite, _floats(event))):
        raise ValueError(f"cannot encode {type(event).__name__}: a number is not finite")
    return _ENCODER.encode(payload)


# msgspec writes the same compact UTF-8 JSON as ``json.dumps`` (floats in their shortest
# round-trip form) several times faster; it writes NaN as null, so :func:`_floats` are
# checked first. Encoding runs once per served slate and feedback signal.
_ENCODER = msgspec.json.Encoder()
_I4 = np.dtype("<i4")
_F4 = np.dtype("<f4")
_I4_MAX = int(np.iinfo(_I4).max)


def _floats(event: ImpressionEvent | FeedbackEvent) -> Iterable[float]:
    """Every float an event's JSON holds outside its packed arrays (checked by :func:`_pack`)."""
    if isinstance(event, FeedbackEvent):
        return (event.ts, event.value, 0.0 if event.server_ts is None else event.server_ts)
    items = event.items if event.shadow is None else event.items + event.shadow.items
    return chain((event.ts,), *((it.score, it.propensity) for it in items))


def _pack(values: Sequence[int] | Sequence[float], dtype: np.dtype[Any], name: str) -> str:
    array = values.array if isinstance(values, PackedArray) else np.asarray(values)
    if dtype.kind == "i" and (array.min() < 0 or array.max() > _I4_MAX):
        raise ValueError(f"impression {name} must be item ids in [0, 2**31)")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"impression {name} must be finite")
    # Packed bytes already of the wire's dtype go out as they are (no copy).
    data = values.data if isinstance(values, PackedArray) and values.dtype == dtype.str else None
    return base64.b64encode(data or array.astype(dtype).tobytes()).decode("ascii")


def _unpack(obj: dict[str, Any], key: str, dtype: np.dtype[Any]) -> Sequence[Any]:
    if key not in obj:
        return ()
    raw = obj[key]
    if not isinstance(raw, str):
        raise EventDecodeError(f"field '{key}' must be a base64 string")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventDecodeError(f"field '{key}' is not base64: {exc}") from None
    if len(data) % dtype.itemsize:
        raise EventDecodeError(f"field '{key}' must hold whole {dtype.itemsize}-byte values")
    array = np.frombuffer(data, dtype=dtype)
    if dtype.kind == "i" and array.size and array.min() < 0:
        raise EventDecodeError(f"field '{key}' must hold non-negative item ids")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise EventDecodeError(f"field '{key}' must be finite")
    return PackedArray(data, dtype.str) if data else ()


def _encode_items(items: tuple[SlateItem, ...]) -> list[dict[str, Any]]:
    return [
        {
            "item_id": int(it.item_id),
            "position": int(it.position),
            "score": float(it.score),
            "propensity": float(it.propensity),
        }
        for it in items
    ]


def decode_event(data: bytes) -> Event:
    """Parse bytes produced by :func:`encode_event` back into an event.

    Raises :class:`EventDecodeError` (never anything else) for bytes that are not UTF-8 JSON,
    carry an unknown version or type, or miss or mistype a field.
    """
    (event,) = decode_events([data])
    if isinstance(event, EventDecodeError):
        raise event
    return event


def decode_events(payloads: Sequence[object]) -> list[Event | EventDecodeError]:
    """Decode a batch of payloads: per payload, the event or the :class:`EventDecodeError`
    that :func:`decode_event` would raise (returned, not raised, so one poison record does not
    cost the batch).

    The checks msgspec cannot express run once per batch, column-wise in numpy, over every
    impression's items, candidate ids and features together; only impressions a check flags
    (and payloads msgspec refuses) go through the strict decoder, one by one.
    """
    out: list[Event | EventDecodeError | None] = [None] * len(payloads)
    at: list[int] = []  # where each impression wire goes in ``out``
    wires: list[_ImpressionWire] = []
    decode = _WIRE.decode
    for i, data in enumerate(payloads):
        try:
            wire = decode(data)  # type: ignore[arg-type]
        except Exception:  # msgspec errors, TypeError for non-bytes, UnicodeDecodeError
            out[i] = _strict(data)
            continue
        if isinstance(wire, _FeedbackWire):
            out[i] = FeedbackEvent(
                wire.request_id,
                wire.user_id,
                wire.item_id,
                wire.event,
                wire.value,
                wire.ts,
                None if wire.server_ts is msgspec.UNSET else wire.server_ts,
            )
        elif isinstance(wire, _ImpressionWire):
            at.append(i)
            wires.append(wire)
        else:  # pragma: no cover - decode returns one of the two tagged structs
            out[i] = _strict(data)
    if wires:
        bad = _flag_impressions(wires)
        candidates = _packed(wires, "candidates", _I4, bad)
        features = _packed(wires, "features", _F4, bad)
        for k, (i, w) in enumerate(zip(at, wires, strict=True)):
            if k in bad:
                out[i] = _strict(payloads[i])
                continue
            out[i] = ImpressionEvent(
                w.request_id, w.user_id, w.ts, w.model_version, w.policy, w.items,
                w.session_id, w.shadow, candidates[k], features[k],
            )  # fmt: skip
    return out  # type: ignore[return-value]  # every slot is filled above


def _strict(data: object) -> Event | EventDecodeError:
    try:
        return _decode_strict(data)
    except EventDecodeError as exc:
        return exc


# --- fast layer: msgspec wire structs -------------------------------------------------------
# Each field's type holds exactly the strict decoder's rule where msgspec can express it (ints
# refuse bools and floats, floats refuse bools, NaN and out-of-range numbers, str refuses
# null, bytes refuse anything but strict base64); what it cannot (the ids and propensities of
# a slate's items, the contents of the arrays) is checked column-wise afterwards.
# ``SlateItem`` and ``ShadowSlate`` are decoded straight into the dataclasses.

_Id = Annotated[int, msgspec.Meta(ge=0, le=_INT64_LIMIT - 1)]
_Ts = Annotated[float, msgspec.Meta(ge=0.0, lt=float(2**32))]


class _ImpressionWire(msgspec.Struct, tag_field="type", tag=IMPRESSION_TYPE):
    v: Literal[1]
    request_id: str
    user_id: str
    ts: _Ts
    model_version: str
    policy: str
    items: tuple[SlateItem, ...]
    session_id: str = ""
    shadow: ShadowSlate | None = None
    candidates: bytes = b""
    features: bytes = b""


class _FeedbackWire(msgspec.Struct, tag_field="type", tag=FEEDBACK_TYPE):
    v: Literal[1]
    request_id: str
    user_id: str
    item_id: _Id
    event: EventType
    value: float
    ts: _Ts
    server_ts: _Ts | msgspec.UnsetType = msgspec.UNSET


_WIRE = msgspec.json.Decoder(_ImpressionWire | _FeedbackWire)
_ITEM_ID = attrgetter("item_id")
_POSITION = attrgetter("position")
_PROPENSITY = attrgetter("propensity")


def _flag_impressions(wires: Sequence[_ImpressionWire]) -> set[int]:
    """Indices of the impressions whose items, candidate ids or features fail a check."""
    bad: set[int] = set()
    sizes = np.fromiter(map(len, map(attrgetter("items"), wires)), np.int64, len(wires))
    items: list[SlateItem] = list(chain.from_iterable(w.items for w in wires))
    if items:
        n = len(items)
        try:  # msgspec hands back ints of any size; too big for int64 is wrong anyway
            ids = np.fromiter(map(_ITEM_ID, items), np.int64, n)
            pos = np.fromiter(map(_POSITION, items), np.int64, n)
        except OverflowError:
            return {k for k, w in enumerate(wires) if not _items_ok(w.items)}
        props = np.fromiter(map(_PROPENSITY, items), np.float64, n)
        wrong = (ids < 0) | (pos < 0) | ~((props > 0.0) & (props <= 1.0))
        if wrong.any():
            owner = np.repeat(np.arange(len(wires)), sizes)
            bad.update(owner[wrong].tolist())
    for k, w in enumerate(wires):
        if w.shadow is not None and w.shadow.items and not _items_ok(w.shadow.items):
            bad.add(k)
    bad |= _flag_arrays(wires, "candidates", _I4)
    bad |= _flag_arrays(wires, "features", _F4)
    return bad


def _items_ok(items: tuple[SlateItem, ...]) -> bool:
    """One slate's items pass the checks msgspec cannot express on dataclass fields."""
    ids = [it.item_id for it in items]
    pos = [it.position for it in items]
    props = [it.propensity for it in items]
    return (
        min(ids) >= 0
        and max(ids) < _INT64_LIMIT
        and min(pos) >= 0
        and max(pos) < _INT64_LIMIT
        and min(props) > 0.0
        and max(props) <= 1.0
    )


def _flag_arrays(wires: Sequence[_ImpressionWire], key: str, dtype: np.dtype[Any]) -> set[int]:
    """Impressions whose ``key`` array is not whole values, or holds a negative id (ints) or
    a non-finite number (floats): every impression's array checked in one numpy pass."""
    blobs: list[bytes] = [getattr(w, key) for w in wires]
    bad = {k for k, b in enumerate(blobs) if len(b) % dtype.itemsize}
    if bad:
        blobs = [b"" if k in bad else b for k, b in enumerate(blobs)]
    values = np.frombuffer(b"".join(blobs), dtype=dtype)
    wrong = values < 0 if dtype.kind == "i" else ~np.isfinite(values)
    if wrong.any():
        ends = np.cumsum([len(b) // dtype.itemsize for b in blobs])
        bad.update(np.searchsorted(ends, np.flatnonzero(wrong), side="right").tolist())
    return bad


def _packed(
    wires: Sequence[_ImpressionWire], key: str, dtype: np.dtype[Any], skip: set[int]
) -> list[Sequence[Any]]:
    """Every impression's ``key`` array as a :class:`PackedArray` over its wire bytes (empty
    for ``skip`` and for impressions without one): no Python number is built."""
    code, trusted = dtype.str, PackedArray.trusted  # _flag_arrays checked every blob
    blobs: list[bytes] = [getattr(w, key) for w in wires]
    return [trusted(b, code) if b and k not in skip else () for k, b in enumerate(blobs)]


# --- strict layer: pure Python, precise errors ----------------------------------------------


def _decode_strict(data: object) -> Event:
    if not isinstance(data, bytes | bytearray | memoryview):
        # Kafka tombstones arrive as None; anything that is not bytes is not an event.
        raise EventDecodeError(f"event payload must be bytes, got {type(data).__name__}")
    try:
        obj = json.loads(bytes(data), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise EventDecodeError(f"not a JSON event: {exc}") from exc
    if not isinstance(obj, dict):
        raise EventDecodeError(f"event must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise EventDecodeError(f"unsupported event schema version {version!r}")
    kind = obj.get("type")
    if kind == IMPRESSION_TYPE:
        return _decode_impression(obj)
    if kind == FEEDBACK_TYPE:
        return _decode_feedback(obj)
    raise EventDecodeError(f"unknown event type {kind!r}")


def _reject_constant(name: str) -> float:
    raise EventDecodeError(f"non-finite number {name} in event")


def _decode_items(obj: dict[str, Any], prefix: str = "") -> tuple[SlateItem, ...]:
    raw_items = obj.get("items")
    if not isinstance(raw_items, list):
        raise EventDecodeError(f"impression field '{prefix}items' must be a list")
    items: list[SlateItem] = []
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            raise EventDecodeError(f"impression {prefix}items[{i}] must be an object")
        where = f"{prefix}items[{i}]."
        items.append(
            SlateItem(
                item_id=_int(raw, "item_id", where),
                position=_int(raw, "position", where),
                score=_float(raw, "score", where),
                propensity=_probability(raw, "propensity", where),
            )
        )
    return tuple(items)


def _decode_shadow(obj: dict[str, Any]) -> ShadowSlate | None:
    raw = obj.get("shadow")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise EventDecodeError("impression field 'shadow' must be an object")
    return ShadowSlate(
        policy=_str(raw, "policy", "shadow."),
        model_version=_str(raw, "model_version", "shadow."),
        items=_decode_items(raw, "shadow."),
    )


def _decode_impression(obj: dict[str, Any]) -> ImpressionEvent:
    items = _decode_items(obj)
    return ImpressionEvent(
        request_id=_str(obj, "request_id"),
        user_id=_str(obj, "user_id"),
        ts=_ts(obj, "ts"),
        model_version=_str(obj, "model_version"),
        policy=_str(obj, "policy"),
        items=items,
        # Optional within v1 (added later): writers that predate them send none.
        session_id=_str(obj, "session_id") if "session_id" in obj else "",
        shadow=_decode_shadow(obj),
        candidates=_unpack(obj, "candidates", _I4),
        features=_unpack(obj, "features", _F4),
    )


def _decode_feedback(obj: dict[str, Any]) -> FeedbackEvent:
    raw_event = _str(obj, "event")
    try:
        event = EventType(raw_event)
    except ValueError:
        raise EventDecodeError(f"unknown feedback event {raw_event!r}") from None
    return FeedbackEvent(
        request_id=_str(obj, "request_id"),
        user_id=_str(obj, "user_id"),
        item_id=_int(obj, "item_id"),
        event=event,
        value=_float(obj, "value"),
        ts=_ts(obj, "ts"),
        # Optional within v1 (added later): writers that predate it send none.
        server_ts=_ts(obj, "server_ts") if "server_ts" in obj else None,
    )


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise EventDecodeError(f"missing field '{where}{key}'")
    return obj[key]


def _str(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise EventDecodeError(f"field '{where}{key}' must be a string")
    return value


def _int(obj: dict[str, Any], key: str, where: str = "") -> int:
    value = _field(obj, key, where)
    # bool is an int subclass in Python; ``true`` is never a valid id or position.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _INT64_LIMIT:
        raise EventDecodeError(f"field '{where}{key}' must be a non-negative int64")
    return value


#: Timestamps are seconds since the epoch that fit the state's u4 field (until 2106).
MAX_TS = float(2**32)


def _ts(obj: dict[str, Any], key: str, where: str = "") -> float:
    value = _float(obj, key, where)
    if not 0.0 <= value < MAX_TS:
        raise EventDecodeError(
            f"field '{where}{key}' must be seconds since the epoch in [0, 2**32)"
        )
    return value


def _probability(obj: dict[str, Any], key: str, where: str = "") -> float:
    value = _float(obj, key, where)
    if not 0.0 < value <= 1.0:
        raise EventDecodeError(f"field '{where}{key}' must be a probability in (0, 1]")
    return value


def _float(obj: dict[str, Any], key: str, where: str = "") -> float:
    value = _field(obj, key, where)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise EventDecodeError(f"field '{where}{key}' must be a number")
    try:
        result = float(value)
    except OverflowError:  # an int too large for a double
        result = math.inf
    if not math.isfinite(result):
        raise EventDecodeError(f"field '{where}{key}' must be finite")
    return result
