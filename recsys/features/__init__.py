"""One user state, folded from events, for the simulator, the online updater and the server.

A policy only sees in production what the server knows: impressions and feedback with their
times. So the state it reads is a pure fold over those events (:class:`EventFold`) into a
compact packed record (:mod:`recsys.features.state`), and one featuriser
(:class:`UserFeaturizer`) turns that record into the policy's user features. The same code
runs over simulated events in the training env, over Kafka events in the online updater
(which writes the record to Redis), and at request time on the record read back. The
simulator's latent interests, boredom and budget never reach a policy through it.

This package imports only :mod:`recsys.types` and numpy: the simulator, the store, the stream
and serving all depend on it, never the other way round.
"""

from recsys.features.catalog import ItemTable
from recsys.features.featurize import ItemFeaturizer, UserFeaturizer, event_cross_blocks
from recsys.features.fold import (
    EventFold,
    FoldCounts,
    request_key,
    session_key,
    ts_seconds,
)
from recsys.features.spec import FEATURE_SPEC_VERSION, FeatureSpec
from recsys.features.state import (
    LAYOUT_VERSION,
    StateArray,
    StateCodec,
    StateDecodeError,
    state_dtype,
)

__all__ = [
    "FEATURE_SPEC_VERSION",
    "LAYOUT_VERSION",
    "EventFold",
    "FeatureSpec",
    "FoldCounts",
    "ItemFeaturizer",
    "ItemTable",
    "StateArray",
    "StateCodec",
    "StateDecodeError",
    "UserFeaturizer",
    "event_cross_blocks",
    "request_key",
    "session_key",
    "state_dtype",
    "ts_seconds",
]
