"""Wire schemas of the HTTP API (pydantic), converted to and from domain types at the edge.

Limits here are the hard, configuration-independent ones (lengths, ranges, finiteness); limits
that depend on the deployed catalog or settings (slate size vs. ``max_slate_size``, item ids vs.
catalog size) are checked by :class:`recsys.serving.recommender.Recommender`, which raises
:class:`recsys.types.InvalidRequestError` naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt

from recsys.types import EventType


def _integral(value: object) -> object:
    """A float with no fractional part as the int it is: JSON has one number type, and JSON
    Schema's ``integer`` (what the OpenAPI document says) includes ``5.0``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: With ``StrictInt``, an integer as JSON Schema means it: ``5`` or ``5.0``, never ``5.5``,
#: ``true`` or ``"5"`` (a bool or a numeric string is a client bug, not a number). Last in the
#: ``Annotated``: after the bounds, which then stay in the JSON Schema as minimum/maximum.
Integral = BeforeValidator(_integral)

UserId = Annotated[
    str,
    Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:@-]+$", examples=["u42"]),
]
RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
SessionId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$", examples=["s-17"])
]
ItemId = Annotated[StrictInt, Field(ge=0, le=2**62), Integral]
ArmKey = Annotated[
    str,
    Path(max_length=160, pattern=r"^[a-z]+(@[A-Za-z0-9_.-]+)?$", examples=["slateq"]),
]
Version = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
ContextValue = str | float | bool | None


class _Strict(BaseModel):
    """Unknown fields are errors: a typo in a field name must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FiltersIn(_Strict):
    """Business filters applied during retrieval (the slate still gets ``slate_size`` items)."""

    categories: (
        Annotated[list[Annotated[StrictInt, Integral]], Field(min_length=1, max_length=1000)] | None
    ) = None
    ads: Literal["any", "only", "exclude"] = "any"


class RecommendRequest(_Strict):
    """``POST /recommend`` body."""

    user_id: UserId
    slate_size: Annotated[StrictInt, Field(ge=1, le=1000), Integral] = 10
    num_candidates: Annotated[StrictInt, Field(ge=1, le=100_000), Integral] | None = None
    exclude: Annotated[list[ItemId], Field(max_length=100_000)] = []
    context: Annotated[dict[str, ContextValue], Field(max_length=64)] | None = None
    filters: FiltersIn | None = None
    #: The client's session (a new value starts a new session in the user's state; without
    #: one, 30 minutes of inactivity does).
    session_id: SessionId | None = None


class SlateItemOut(BaseModel):
    """One slot of the returned slate."""

    item_id: int
    position: int
    score: float
    propensity: float


class RecommendResponse(BaseModel):
    """``POST /recommend`` answer: the slate with exact per-slot propensities, and which
    policy version chose it (``model_version``, e.g. ``slateq@20261201T...``)."""

    request_id: str
    model_version: str
    policy: str
    #: True when the user-state store did not answer and the slate was chosen from this
    #: replica's cached copy of the user's state, or as for a new user.
    degraded: bool = False
    #: True when nothing is known about the user yet: the slate comes from popular and fresh
    #: candidates with the policy's exploration; state builds from the user's first events.
    cold_start: bool = False
    items: list[SlateItemOut]


class FeedbackRequest(_Strict):
    """``POST /feedback`` body: one signal on an impressed item."""

    request_id: RequestId
    user_id: UserId
    item_id: ItemId
    event: EventType
    # Strict numbers: JSON true/false or a numeric string is a client bug, not a value (a
    # lax float would turn ``"value": true`` into 1.0 and ``"ts": "123.5"`` into a time).
    value: Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-1e9, le=1e9)] | None = None
    ts: Annotated[StrictFloat, Field(allow_inf_nan=False, ge=0, le=1e11)] | None = None


class FeedbackResponse(BaseModel):
    """``POST /feedback`` answer (202): the event was handed to the stream."""

    accepted: bool
    request_id: str


class ErrorDetail(BaseModel):
    """Which input was wrong and why."""

    field: str
    message: str


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: str
    detail: list[ErrorDetail]


class PinRequest(_Strict):
    """``POST /admin/policies/{arm}/pin`` body: the artifact version to serve on the arm."""

    version: Version


class ArmOut(BaseModel):
    """One serving arm as the admin API reports it."""

    arm: str
    #: ``traffic`` (serves its share of users) or ``shadow`` (logged only).
    role: Literal["traffic", "shadow"]
    policy: str
    #: Share of users (0 for the shadow).
    weight: float
    #: ``policy@version`` answering now (the retrieval fallback until a version loads).
    serving: str
    serving_version: str | None
    pinned: str | None
    #: Complete versions on disk, oldest first.
    versions: list[str]
    refused: list[str]
    last_error: str


class PoliciesOut(BaseModel):
    """``/admin/policies`` answer: every arm this replica serves."""

    arms: list[ArmOut]
