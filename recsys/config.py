"""Settings: one tree, read from ``RECSYS_``-prefixed environment variables (nested with ``__``).

Built once in a composition root (the CLI, a Ray Serve replica, a test) and sliced: each
component receives only its own section. Nothing else in the package reads ``os.environ``.
Every field has an embedded default so ``recsys demo`` runs with no configuration at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Policy names a service can serve (``retrieval`` needs no trained artifact).
POLICY_NAMES = ("slateq", "reinforce", "myopic", "retrieval")
_ARM = re.compile(r"^(slateq|reinforce|myopic|retrieval)(@[A-Za-z0-9_.-]{1,128})?$")


def check_arm(spec: str) -> str:
    """An arm is ``name`` (the newest version of policy ``name``) or ``name@version``."""
    if not _ARM.match(spec):
        raise ValueError(
            f"{spec!r} is not a policy arm: use one of {', '.join(POLICY_NAMES)}, optionally "
            "followed by @version"
        )
    return spec


class CatalogSettings(BaseModel):
    """Synthetic world used by the demo and tests: catalog and user population."""

    num_items: int = Field(2000, ge=1, le=10_000_000)
    num_users: int = Field(500, ge=1, le=10_000_000)
    num_topics: int = Field(16, ge=1, le=1024)
    seed: int = 0


class CandidateSettings(BaseModel):
    """Two-tower retrieval model, its FAISS index and the datasets it trains on."""

    dim: int = Field(32, ge=2, le=1024)
    epochs: int = Field(
        40, ge=1, le=1000, description="maximum epochs; training early-stops on validation"
    )
    default_k: int = Field(50, ge=1, le=10_000)
    num_ads: int = Field(
        10, ge=0, le=1000, description="ads among the candidates when no policy says otherwise"
    )
    recall_target: float = Field(
        0.95, gt=0.0, le=1.0, description="recall@100 vs exact search the ANN index is tuned to"
    )
    data_dir: Path = Field(
        Path("~/.cache/recsys"), description="cache root for datasets (ml-100k lands in it)"
    )


class PolicySettings(BaseModel):
    """The served slate policy: which ``policy-<name>`` artifact, and how it explores.

    ``name`` ``retrieval`` serves Plackett-Luce over the retrieval scores (no training
    needed); it is also what answers while no artifact of ``name`` can be served.
    ``exploration`` ``policy`` keeps the sampler the policy was trained with; ``epsilon`` or
    ``boltzmann`` replace it (with ``epsilon`` / ``temperature``), keeping its ad load;
    ``greedy`` serves the policy's own best slate with propensity 1 (what an evaluation of
    the policy measures, e.g. ``recsys evaluate live``; such traffic teaches off-policy
    learning nothing new, so it is not the default).
    """

    name: Literal["slateq", "reinforce", "myopic", "retrieval"] = "slateq"
    exploration: Literal["policy", "greedy", "epsilon", "boltzmann"] = "policy"
    epsilon: float = Field(0.1, ge=0.0, le=1.0)
    temperature: float = Field(0.1, gt=0.0, le=100.0)
    reload_interval_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="how often replicas look for a newer version"
    )
    torch_threads: int = Field(
        1, ge=1, le=64, description="intra-op threads per replica (torch and FAISS)"
    )
    seed: int = 0
    traffic: dict[str, float] = Field(
        default_factory=dict,
        description="A/B split: arm (name or name@version) -> weight; empty: all to `name`",
    )
    shadow: str | None = Field(
        None, description="arm computed on every request for logging only, never served"
    )
    traffic_salt: str = Field(
        "recsys-ab", min_length=1, max_length=64, description="changes every user's arm"
    )

    @field_validator("traffic")
    @classmethod
    def _check_traffic(cls, value: dict[str, float]) -> dict[str, float]:
        if len(value) > 16:
            raise ValueError(f"at most 16 arms, got {len(value)}")
        for arm, weight in value.items():
            check_arm(arm)
            if not (weight >= 0.0 and weight < float("inf")):
                raise ValueError(f"weight of {arm!r} must be finite and >= 0, got {weight}")
        if value and sum(value.values()) <= 0.0:
            raise ValueError("traffic weights must not all be 0")
        return value

    @field_validator("shadow")
    @classmethod
    def _check_shadow(cls, value: str | None) -> str | None:
        return None if value is None else check_arm(value)

    def arms(self) -> dict[str, float]:
        """The traffic split as fractions summing to 1 (``{name: 1.0}`` without a split)."""
        weights = self.traffic or {self.name: 1.0}
        total = sum(weights.values())
        return {arm: w / total for arm, w in weights.items() if w > 0.0}


class StoreSettings(BaseModel):
    """User-state backend picked by URL scheme: ``redis://host:port/db`` or ``memory://``."""

    url: str = "memory://"
    key_prefix: str = "recsys"

    @model_validator(mode="after")
    def _check_scheme(self) -> Self:
        if not self.url.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError(
                f"store.url must start with memory://, redis://, rediss:// or unix://, "
                f"got {self.url!r}"
            )
        return self


class StreamSettings(BaseModel):
    """Event stream: Kafka bootstrap servers, or empty for the in-process log."""

    bootstrap: str = ""
    impressions_topic: str = "impressions"
    feedback_topic: str = "feedback"
    consumer_name: str = "online-updater"
    poll_timeout_s: float = Field(0.2, gt=0.0, le=60.0)
    publish_buffer: int = Field(
        100_000, ge=1, description="events the server holds while the broker is unreachable"
    )
    dead_letter_topic: str = Field(
        "dead-letters", min_length=1, description="where consumers put records they cannot use"
    )
    partitions: int = Field(
        1, ge=1, le=1024, description="partitions of the event topics when this creates them"
    )
    linger_ms: int = Field(
        50,
        ge=0,
        le=1_000,
        description="how long the server's producer waits to batch events into one produce "
        "request: each request costs the replica CPU, and the updater sees events this much "
        "later",
    )
    watermark_delay_s: float = Field(
        0.5,
        ge=0.0,
        le=3600.0,
        description="how late after its server time an event may still reach the broker: a "
        "caught-up partition holds the consumers' watermark this far behind now",
    )


class AuthSettings(BaseModel):
    """API keys, sent in the ``X-API-Key`` header.

    Admin endpoints always need an admin key (without one configured they are off);
    ``/recommend`` and ``/feedback`` need a client or admin key when listed in ``protect``.
    Keys come from these lists or from files with one key per line (a mounted Kubernetes
    Secret); they are compared in constant time and masked wherever settings are printed.
    """

    admin_keys: list[SecretStr] = Field(default_factory=list, max_length=64)
    client_keys: list[SecretStr] = Field(default_factory=list, max_length=1024)
    admin_keys_file: Path | None = None
    client_keys_file: Path | None = None
    protect: list[Literal["recommend", "feedback"]] = Field(default_factory=list)

    @field_validator("admin_keys", "client_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            if len(key.get_secret_value()) < 16:
                raise ValueError("an API key must have at least 16 characters")
        return keys

    @field_serializer("admin_keys", "client_keys", when_used="json")
    def _mask(self, keys: list[SecretStr], info: FieldSerializationInfo) -> list[str]:
        # Settings travel to Serve replicas as JSON (``settings_json``): only there are the
        # keys written out; every other dump (``recsys config``, logs) shows them masked.
        reveal = isinstance(info.context, dict) and info.context.get("secrets") is True
        return [k.get_secret_value() if reveal else "**********" for k in keys]


class ServingSettings(BaseModel):
    """HTTP front end (Ray Serve + FastAPI)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    replicas: int = Field(1, ge=1, le=64)
    max_slate_size: int = Field(50, ge=1, le=1000)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_exclude: int = Field(10_000, ge=0)
    max_batch_size: int = Field(
        16, ge=1, le=256, description="requests answered by one batched policy forward"
    )
    batcher: Literal["micro", "serve"] = Field(
        "micro",
        description="micro: close a batch when the last one is done; serve: @serve.batch",
    )
    batch_wait_ms: float = Field(
        0.5, ge=0.0, le=100.0, description="how long a partial batch waits for more requests"
    )
    max_ongoing_requests: int = Field(
        128, ge=1, le=10_000, description="per replica; Serve queues or rejects beyond it"
    )
    store_timeout_ms: float = Field(
        50.0, gt=0.0, le=10_000.0, description="budget of one user-state read on the request path"
    )
    store_retry_s: float = Field(
        1.0, gt=0.0, le=60.0, description="after a failed read, serve degraded this long"
    )
    state_cache_size: int = Field(
        10_000, ge=0, description="recently read user states kept per replica for degraded mode"
    )
    feedback_max_skew_s: float = Field(
        300.0, ge=0.0, description="a feedback ts later than server time by more is clamped"
    )
    feedback_max_age_s: float = Field(
        7 * 86_400.0, ge=0.0, description="a feedback ts older than this is clamped"
    )
    throughput_optimized: bool = Field(
        True,
        description="a Ray started by recsys runs Serve's HAProxy ingress and throughput mode",
    )
    auth: AuthSettings = Field(default_factory=lambda: AuthSettings())
    cors_origins: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="origins browsers may call the API from; empty: CORS off",
    )


class ArtifactSettings(BaseModel):
    """Where versioned model artifacts live."""

    root: Path = Path(".recsys/artifacts")


class DemoSettings(BaseModel):
    """Simulated traffic driven through the HTTP API by ``recsys demo``."""

    duration_s: float = Field(10.0, gt=0.0, le=3600.0)
    concurrency: int = Field(4, ge=1, le=64)
    slate_size: int = Field(10, ge=1, le=100)


class SimulatorSettings(BaseModel):
    """User-behavior simulator: sizes, choice model and user dynamics (see docs/simulator.md).

    Every float must be finite (NaN or inf fails validation), so a typo in an env var cannot
    silently turn the simulated users into NaN-producing ones. Defaults are tuned so that
    long-term value and short-term clicks disagree: clickbait wins clicks but loses lifetime
    engagement, quality content does the opposite.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    seed: int = 0
    num_candidates: int = Field(100, ge=1, le=100_000, description="candidates per request")
    slate_size: int = Field(10, ge=1, le=1000)
    max_episode_steps: int = Field(1000, ge=1, description="Gymnasium truncation, in steps")
    reward: Literal["engagement", "click", "revenue"] = "engagement"
    # Choice model.
    choice_model: Literal["mnl", "cascade"] = "mnl"
    no_click_logit: float = Field(2.0, ge=-50.0, le=50.0)
    position_bias: float = Field(0.5, ge=0.0, le=10.0)
    affinity_scale: float = Field(4.0, ge=0.0, le=100.0)
    # Click appeal (utility before the choice model's scale).
    quality_weight: float = Field(0.5, ge=0.0, le=10.0)
    clickbait_appeal: float = Field(1.0, ge=0.0, le=10.0)
    ad_appeal: float = Field(-0.3, ge=-10.0, le=10.0)
    fatigue_weight: float = Field(0.1, ge=0.0, le=10.0)
    fatigue_gain: float = Field(1.0, ge=0.0, le=100.0)
    fatigue_half_life_steps: float = Field(5.0, gt=0.0, le=1e6)
    repeat_weight: float = Field(1.5, ge=0.0, le=10.0)
    repeat_half_life_steps: float = Field(20.0, gt=0.0, le=1e6)
    history_size: int = Field(5, ge=1, le=64)
    ad_fatigue_weight: float = Field(0.1, ge=0.0, le=10.0)
    ad_fatigue_gain: float = Field(0.2, ge=0.0, le=100.0)
    ad_fatigue_half_life_steps: float = Field(10.0, gt=0.0, le=1e6)
    # Post-conversion satiation: a purchase sates the user on the item's topics for a long
    # while (half-life 10x boredom's). It barely dents click appeal (habit: click odds x0.67
    # right after a pure-topic purchase) but sours satisfaction (-2 on that topic: even a
    # loved topic, I = +1, disappoints; neutral after 50 steps), so its cost shows up later
    # (dwell, budget drain, drift away, return), not in the click. Gain 0 turns it off.
    satiation_gain: float = Field(
        1.0, ge=0.0, le=100.0, description="satiation per conversion, x the item's topic mix"
    )
    satiation_half_life_steps: float = Field(50.0, gt=0.0, le=1e6)
    satiation_appeal_weight: float = Field(0.1, ge=0.0, le=10.0)
    satiation_satisfaction_weight: float = Field(2.0, ge=0.0, le=10.0)
    # Satisfaction and the observable responses it drives.
    satisfaction_quality_weight: float = Field(1.0, ge=0.0, le=10.0)
    clickbait_penalty: float = Field(2.0, ge=0.0, le=10.0)
    satisfaction_noise: float = Field(0.2, ge=0.0, le=10.0)
    no_click_satisfaction: float = Field(-0.1, ge=-10.0, le=10.0)
    dwell_sharpness: float = Field(2.5, ge=0.0, le=100.0)
    dwell_bias: float = Field(0.0, ge=-20.0, le=20.0)
    skip_fraction: float = Field(0.2, ge=0.0, le=1.0)
    like_threshold: float = Field(1.0, ge=-10.0, le=10.0)
    like_sharpness: float = Field(4.0, ge=0.0, le=100.0)
    conversion_rate: float = Field(
        0.3, ge=0.0, le=0.5, description="P(conversion | ad click) at satisfaction 0"
    )
    # Time budget (seconds) and sessions.
    session_budget_s: float = Field(1200.0, gt=0.0, le=1e7)
    browse_cost_s: float = Field(10.0, gt=0.0, le=1e5)
    no_click_cost_s: float = Field(20.0, ge=0.0, le=1e5)
    extension_gain: float = Field(0.8, ge=0.0, lt=1.0)
    bad_content_cost_s: float = Field(150.0, ge=0.0, le=1e6)
    ad_cost_s: float = Field(10.0, ge=0.0, le=1e5)
    interest_drift: float = Field(0.05, ge=0.0, le=1.0)
    return_bias: float = Field(0.0, ge=-20.0, le=20.0)
    return_satisfaction_weight: float = Field(3.0, ge=0.0, le=100.0)
    return_max: float = Field(0.95, ge=0.0, le=1.0)
    session_gap_steps: float = Field(20.0, ge=0.0, le=1e6)

    @model_validator(mode="after")
    def _check_slate_fits(self) -> Self:
        if self.slate_size > self.num_candidates:
            raise ValueError(
                f"simulator.slate_size ({self.slate_size}) exceeds simulator.num_candidates "
                f"({self.num_candidates}): a slate is chosen from the candidates"
            )
        return self


class Settings(BaseSettings):
    """Root settings; ``RECSYS_STORE__URL=redis://...`` sets ``settings.store.url``."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    catalog: CatalogSettings = CatalogSettings()
    candidates: CandidateSettings = CandidateSettings()
    policy: PolicySettings = PolicySettings()
    store: StoreSettings = StoreSettings()
    stream: StreamSettings = StreamSettings()
    serving: ServingSettings = ServingSettings()
    artifacts: ArtifactSettings = ArtifactSettings()
    demo: DemoSettings = DemoSettings()
    simulator: SimulatorSettings = SimulatorSettings()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Self:
        if self.candidates.default_k > self.catalog.num_items:
            raise ValueError(
                f"candidates.default_k ({self.candidates.default_k}) exceeds "
                f"catalog.num_items ({self.catalog.num_items})"
            )
        if self.demo.slate_size > self.serving.max_slate_size:
            raise ValueError(
                f"demo.slate_size ({self.demo.slate_size}) exceeds "
                f"serving.max_slate_size ({self.serving.max_slate_size})"
            )
        return self


def settings_json(settings: Settings) -> str:
    """``settings`` as JSON with its secrets written out: how settings travel to the server
    processes this one starts (never print it)."""
    return settings.model_dump_json(context={"secrets": True})


def load_settings() -> Settings:
    """Build settings from the environment and defaults (called by composition roots)."""
    return Settings()
