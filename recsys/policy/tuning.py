"""Hyperparameter sweeps of the policy trainer with Ray Tune (``recsys tune policy``).

Settings such as SlateQ's ``gamma`` or REINFORCE's budget used to be chosen by scratch runs
that no JSON recorded. A sweep makes the choice a command anyone can rerun, with a record of
every trial:

- **Search space**: a YAML or JSON file mapping :class:`PolicyTrainConfig` fields to
  distributions, ``{"gamma": {"choice": [0.8, 0.9]}, "lr": {"loguniform": [1e-4, 3e-3]}}``
  (:func:`load_space`). A field that is not a setting, one the sweep or the task fixes, an
  unknown distribution, or a value the config refuses is a ``ValueError`` naming it, before
  Ray starts (:func:`check_space`).
- **Trials**: :func:`tune_policy` runs a ``ray.tune.Tuner`` over ``num_samples`` configs drawn
  from the space (seeded), each trial in-process (``workers=0``: no nested Ray actors, one CPU
  and one torch thread each, at most ``concurrency`` at once), starting from a base config
  overridden by the sampled values. Every ``eval_every`` iterations (and at its last) a trial
  reports its mean return on **validation** users or seeds only; ASHA stops trials that trail
  their peers at the same iteration.
- **Choice, then one test**: the winner is the trial with the best last-reported validation
  score among those that ran their whole budget (a stopped trial has no final checkpoint, and
  the scheduler already judged it worse at that point). Its final checkpoint, reported with
  its last score, is evaluated once on the **test** users or seeds; no other trial is ever
  scored there. The JSON holds every trial (sampled values, validation scores per report,
  whether it was stopped, wall time), the winner and its test score; a PNG plots validation
  score against iteration per trial, the winner highlighted.

What a trial trains on and how it is scored is a :class:`SweepTask`: :class:`EnvSweepTask`
for any slate env (validation and test on disjoint evaluation seeds, both disjoint from
training's), :class:`recsys.pipeline.SimulatorSweepTask` for the project simulator
(validation users at the end of the population, test users above the training half).
Ray is started by the sweep and shut down when it ends, also on errors and Ctrl-C; Tune's
own storage is a temporary folder under the output folder, removed at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from recsys.policy.base import BatchSlatePolicy, TrainableSlatePolicy
from recsys.policy.evaluation.episodes import evaluate_on_env
from recsys.policy.seeds import evaluation_reset_seeds
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.rollout import EnvFactory
from recsys.policy.training.trainer import TrainResult, train_policy

__all__ = [
    "DISTRIBUTIONS",
    "METRIC",
    "SWEEP_FIELDS",
    "Distribution",
    "EnvSweepTask",
    "SweepTask",
    "TrialRecord",
    "check_space",
    "choose_winner",
    "load_space",
    "parse_space",
    "plot_sweep",
    "sampled_config",
    "tune_policy",
]

#: Distributions a space file may name, as Ray Tune's samplers of the same name
#: (``randint`` and ``lograndint`` exclude their upper bound, as Tune's do).
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "lograndint")
#: Settings the sweep sets itself: the algorithm (``--algo``), in-process rollouts (one CPU
#: per trial, no nested Ray actors) and one checkpoint at the end of each trial.
SWEEP_FIELDS = ("algo", "workers", "checkpoint_every")
#: What trials report and the scheduler compares: mean return on validation users / seeds.
METRIC = "validation_return"

OnIteration = Callable[[int, TrainableSlatePolicy, dict[str, float]], None]


# ---- the search space ----------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """One setting's distribution: ``kind`` of :data:`DISTRIBUTIONS` and its arguments
    (``choice``: the values; the others: ``lower, upper``)."""

    kind: str
    args: tuple[Any, ...]

    def sampler(self) -> Any:
        """The Ray Tune sampler (``tune.choice(values)``, ``tune.loguniform(lo, hi)``, ...)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)

    def extremes(self) -> tuple[Any, ...]:
        """Every value a ``choice`` can take, else the smallest and largest samples: each one
        must make a valid config, so a bad range fails before any trial runs."""
        if self.kind == "choice":
            return self.args
        low, high = self.args
        return (low, high - 1) if self.kind in ("randint", "lograndint") else (low, high)

    def to_json(self) -> dict[str, list[Any]]:
        """As written in a space file."""
        return {self.kind: list(self.args)}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numeric_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _distribution(name: str, spec: object) -> Distribution:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ValueError(
            f'space: {name} must map to one distribution, e.g. {{"choice": [...]}} or '
            f'{{"loguniform": [low, high]}}; got {spec!r}'
        )
    [(kind, args)] = spec.items()
    numeric_text = [a for a in args if _numeric_text(a)] if isinstance(args, list) else []
    if numeric_text:
        raise ValueError(
            f"space: {name}: {numeric_text[0]!r} is text, not a number (YAML reads 1e-4 as "
            "text: write 1.0e-4)"
        )
    if kind not in DISTRIBUTIONS:
        raise ValueError(
            f"space: {name} has unknown distribution {kind!r}; "
            f"use one of {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(args, list) or not args:
        raise ValueError(f"space: {name}: {kind} needs a non-empty list, got {args!r}")
    if kind == "choice":
        return Distribution(kind, tuple(args))
    if len(args) != 2 or not all(_is_number(a) for a in args) or not args[0] < args[1]:
        raise ValueError(
            f"space: {name}: {kind} needs [low, high] numbers with low < high, got {args!r}"
        )
    if kind in ("randint", "lograndint") and not all(isinstance(a, int) for a in args):
        raise ValueError(f"space: {name}: {kind} needs integer bounds, got {args!r}")
    if kind in ("loguniform", "lograndint") and args[0] <= 0:
        raise ValueError(f"space: {name}: {kind} needs low > 0, got {args!r}")
    return Distribution(kind, (args[0], args[1]))


def parse_space(data: object) -> dict[str, Distribution]:
    """A search space from a parsed space file: ``{field: {distribution: args}}``.

    Only the form is checked here; :func:`check_space` checks the fields against a config."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(
            "space: expected a non-empty mapping of settings to distributions, e.g. "
            '{"gamma": {"choice": [0.8, 0.9]}}'
        )
    known = {f.name for f in fields(PolicyTrainConfig)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"space: unknown policy training settings: {', '.join(unknown)}")
    return {str(name): _distribution(str(name), spec) for name, spec in data.items()}


def load_space(path: Path) -> dict[str, Distribution]:
    """Read a space file: YAML (``.yaml``/``.yml``) or JSON; a file that cannot be read or
    parsed is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read space file {path}: {exc}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"space file {path} is not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"space file {path} is not valid JSON: {exc}") from exc
    return parse_space(data)


def sampled_config(base: PolicyTrainConfig, params: Mapping[str, Any]) -> PolicyTrainConfig:
    """``base`` overridden by a trial's sampled ``params``, as a trial trains it: in-process
    rollouts and one checkpoint, at the end."""
    values = {**base.to_dict(), **params, "workers": 0}
    config = PolicyTrainConfig.from_dict(values)
    return PolicyTrainConfig.from_dict({**values, "checkpoint_every": config.iterations})


def check_space(
    space: Mapping[str, Distribution],
    base: PolicyTrainConfig,
    *,
    fixed: Collection[str] = (),
    check: Callable[[PolicyTrainConfig], None] | None = None,
) -> None:
    """Refuse, naming the setting, what no trial could run: a setting the sweep sets
    (:data:`SWEEP_FIELDS`) or the task fixes (``fixed``, e.g. the simulator's setup), a
    range over an integer setting, or a value (each ``choice``, each end of a range) that
    makes an invalid config (``PolicyTrainConfig``'s own checks, then ``check``)."""
    for name, dist in space.items():
        if name in SWEEP_FIELDS:
            raise ValueError(f"space: {name} is set by the sweep, not sampled")
        if name in fixed:
            raise ValueError(
                f"space: {name} is fixed for this environment (it shapes the setup every "
                "trial shares), not sampled"
            )
        current = getattr(base, name)
        integer = isinstance(current, int) and not isinstance(current, bool)
        if integer and dist.kind in ("uniform", "loguniform"):
            raise ValueError(
                f"space: {name} is an integer setting; use choice, randint or lograndint"
            )
        for value in dist.extremes():
            try:
                config = sampled_config(base, {name: value})
                if check is not None:
                    check(config)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"space: {name} = {value!r} is not a valid setting: {exc}"
                ) from exc


def max_iterations(space: Mapping[str, Distribution], base: PolicyTrainConfig) -> int:
    """The longest budget a trial can draw (the scheduler's horizon)."""
    dist = space.get("iterations")
    if dist is None:
        return base.iterations
    return int(max(dist.extremes()))


# ---- what a trial trains on and how it is scored -------------------------------------------


class SweepTask(Protocol):
    """Where a sweep's trials train and how they are scored. Picklable: it is shipped to
    every trial through Ray's object store.

    ``fixed_fields``: settings the space may not sample (they shape what every trial
    shares). ``validate`` scores a policy on validation users or seeds only (the scheduler's
    and the choice's metric); ``test`` on test users or seeds, called once, for the winner.
    Both return at least ``"return"``: a mean with its CI (``mean``, ``ci_low``, ``ci_high``,
    ``std``, ``n``).
    """

    @property
    def fixed_fields(self) -> tuple[str, ...]: ...

    def describe(self) -> dict[str, Any]: ...

    def check(self, config: PolicyTrainConfig) -> None: ...

    def train(
        self, config: PolicyTrainConfig, *, artifacts_root: Path, on_iteration: OnIteration
    ) -> TrainResult: ...

    def validate(self, policy: BatchSlatePolicy) -> dict[str, Any]: ...

    def test(self, policy: BatchSlatePolicy) -> dict[str, Any]: ...


@dataclass
class EnvSweepTask:
    """A sweep on any slate env (``env_factory(worker_index) -> BatchSlateEnv``, picklable,
    e.g. an :class:`~recsys.policy.training.custom_env.ImportedEnvFactory`).

    Validation plays ``validation_episodes`` episodes from the evaluation seeds of
    ``seed``, test ``test_episodes`` from those of the first seed after it whose episodes
    share no reset seed with validation's (:func:`evaluation_reset_seeds`; both ranges are
    disjoint from every training seed by construction), each greedy, at most ``max_steps``
    steps, the return in the env's own reward (else its hidden reward, else clicks).
    """

    env_factory: EnvFactory
    validation_episodes: int = 64
    test_episodes: int = 400
    max_steps: int = 1000
    seed: int = 0
    _env: Any = field(default=None, init=False, repr=False, compare=False)

    fixed_fields: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        if self.validation_episodes < 2 or self.test_episodes < 2 or self.max_steps < 1:
            raise ValueError(
                "need validation and test episodes >= 2 and max_steps >= 1, got "
                f"{self.validation_episodes}, {self.test_episodes}, {self.max_steps}"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_env"] = None  # each trial builds its own
        return state

    def env(self) -> Any:
        """The evaluation env (worker 0's, as ``recsys evaluate env`` builds it), built once."""
        if self._env is None:
            self._env = self.env_factory(0)
        return self._env

    def _seeds(self) -> tuple[int, int, list[int], list[int]]:
        b = int(self.env().batch_size)

        def span(seed: int, episodes: int) -> list[int]:
            return evaluation_reset_seeds(seed, math.ceil(episodes / b), b)

        valid = span(self.seed, self.validation_episodes)
        test_seed = self.seed + 1
        while True:
            test = span(test_seed, self.test_episodes)
            if test[-1] + b <= valid[0] or valid[-1] + b <= test[0]:
                return self.seed, test_seed, valid, test
            test_seed += 1

    def describe(self) -> dict[str, Any]:
        valid_seed, test_seed, valid, test = self._seeds()
        b = int(self.env().batch_size)
        return {
            "env": getattr(self.env_factory, "spec", repr(self.env_factory)),
            "validation": {
                "episodes": self.validation_episodes,
                "seed": valid_seed,
                "reset_seeds": [valid[0], valid[-1] + b],
                "max_steps": self.max_steps,
            },
            "test": {
                "episodes": self.test_episodes,
                "seed": test_seed,
                "reset_seeds": [test[0], test[-1] + b],
                "max_steps": self.max_steps,
            },
            "return_definition": "sum of the env's own reward (else hidden, else clicks) over "
            "one episode, greedy slates; validation and test reset seeds are disjoint from "
            "each other and from training's",
        }

    def check(self, config: PolicyTrainConfig) -> None:
        return None

    def train(
        self, config: PolicyTrainConfig, *, artifacts_root: Path, on_iteration: OnIteration
    ) -> TrainResult:
        return train_policy(
            config,
            env_factory=self.env_factory,
            artifacts_root=artifacts_root,
            on_iteration=on_iteration,
        )

    def _evaluate(self, policy: BatchSlatePolicy, seed: int, episodes: int) -> dict[str, Any]:
        result = evaluate_on_env(
            {"policy": policy}, self.env(), episodes=episodes, max_steps=self.max_steps, seed=seed
        )
        summary: dict[str, Any] = result["policies"]["policy"]
        return summary

    def validate(self, policy: BatchSlatePolicy) -> dict[str, Any]:
        return self._evaluate(policy, self._seeds()[0], self.validation_episodes)

    def test(self, policy: BatchSlatePolicy) -> dict[str, Any]:
        return self._evaluate(policy, self._seeds()[1], self.test_episodes)


# ---- one trial (runs in a Ray worker) ------------------------------------------------------


def _trial(
    params: dict[str, Any], *, task: SweepTask, base: PolicyTrainConfig, eval_every: int
) -> None:
    """Train ``base`` with ``params``; report the validation score every ``eval_every``
    iterations, and at the last one together with the final checkpoint (so the winner needs
    no retraining). One torch thread: a trial owns one CPU."""
    from ray import tune

    torch.set_num_threads(1)
    start = time.perf_counter()
    config = sampled_config(base, params)
    final: dict[str, float] = {}

    def on_iteration(iteration: int, policy: TrainableSlatePolicy, row: dict[str, float]) -> None:
        last = iteration == config.iterations
        if iteration % eval_every and not last:
            return
        score = task.validate(policy)["return"]
        metrics = {
            "iteration": float(iteration),
            METRIC: float(score["mean"]),
            "validation_ci_low": float(score["ci_low"]),
            "validation_ci_high": float(score["ci_high"]),
            "wall_s": time.perf_counter() - start,
        }
        if last:  # reported with the checkpoint train_policy writes after this call
            final.update(metrics)
        else:
            tune.report(metrics)

    with tempfile.TemporaryDirectory(prefix="tune-trial-") as tmp:
        result = task.train(config, artifacts_root=Path(tmp), on_iteration=on_iteration)
        if result.checkpoint is None:
            raise RuntimeError("the trial's training wrote no final checkpoint")
        final["wall_s"] = time.perf_counter() - start
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(result.checkpoint)))


# ---- the sweep -----------------------------------------------------------------------------


@dataclass
class TrialRecord:
    """One trial as the JSON reports it: validation scores only."""

    trial_id: str
    params: dict[str, Any]
    budget: int
    reports: list[dict[str, float]]
    wall_s: float | None
    error: str | None = None
    checkpoint: str | None = None

    @property
    def last(self) -> dict[str, float] | None:
        return self.reports[-1] if self.reports else None

    @property
    def completed(self) -> bool:
        """Ran its whole budget and reported its final checkpoint."""
        last = self.last
        return (
            self.error is None
            and self.checkpoint is not None
            and last is not None
            and int(last["iteration"]) == self.budget
        )

    def to_json(self) -> dict[str, Any]:
        last = self.last
        out: dict[str, Any] = _finite(
            {
                "trial_id": self.trial_id,
                "params": self.params,
                "iterations_budget": self.budget,
                "validation": self.reports,
                "final_validation_return": None if last is None else last[METRIC],
                "last_iteration": None if last is None else int(last["iteration"]),
                "stopped_early": self.error is None and not self.completed,
                "error": self.error,
                "wall_s": self.wall_s,
            }
        )
        return out


def choose_winner(records: Sequence[TrialRecord]) -> TrialRecord:
    """The trial with the best last-reported validation score among those that ran their
    whole budget (the first on ties). A trial ASHA stopped is left out: it has no final
    checkpoint, and the scheduler judged it worse than its peers at the same iteration."""
    finished = [r for r in records if r.completed]
    if not finished:
        errors = sorted({r.error for r in records if r.error})
        raise RuntimeError(
            "no trial finished its budget"
            + (f"; trials failed with: {'; '.join(errors)}" if errors else "")
        )
    return max(finished, key=lambda r: r.reports[-1][METRIC])


def _finite(value: Any) -> Any:
    """JSON-ready: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _error_line(error: BaseException) -> str:
    """A trial's error in one line: Ray wraps the trial's exception with its traceback, whose
    last line names the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _record(result: Any, base: PolicyTrainConfig) -> TrialRecord:
    """A Tune ``Result`` as a :class:`TrialRecord`."""
    params = dict(result.config or {})
    frame = result.metrics_dataframe
    reports: list[dict[str, float]] = []
    if frame is not None and METRIC in frame:
        columns = ["iteration", METRIC, "validation_ci_low", "validation_ci_high", "wall_s"]
        for row in frame[columns].to_dict("records"):
            reports.append({k: float(v) for k, v in row.items()})
    metrics = result.metrics or {}
    error = None if result.error is None else _error_line(result.error)
    return TrialRecord(
        trial_id=str(metrics.get("trial_id") or Path(result.path).name),
        params=params,
        budget=sampled_config(base, params).iterations,
        reports=reports,
        wall_s=reports[-1]["wall_s"] if reports else None,
        error=error,
        checkpoint=None if result.checkpoint is None else str(result.checkpoint.path),
    )


def _describe_params(params: Mapping[str, Any]) -> str:
    def short(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={short(v)}" for k, v in sorted(params.items()))


def _progress_callback(
    progress: Any, bar: Any, budget_of: Callable[[Mapping[str, Any]], int]
) -> Any:
    """A Tune callback (driver side) that advances a rich ``progress`` bar over finished
    trials and prints one line per finished trial, in place of Tune's console tables.

    Tune pickles its run config (callbacks included) for resuming; the bar is not picklable
    and means nothing elsewhere, so a pickled copy leaves it out and stays silent."""
    from ray.tune import Callback

    class _TrialProgress(Callback):  # type: ignore[misc]  # ray is untyped
        def __init__(self, live: tuple[Any, Any, Callable[[Mapping[str, Any]], int]]) -> None:
            self.live: tuple[Any, Any, Callable[[Mapping[str, Any]], int]] | None = live
            self.best: float | None = None
            self.done = 0

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "live": None}

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            if self.live is None:
                return
            last = trial.last_result or {}
            score, at = last.get(METRIC), last.get("iteration")
            if score is None or at is None:
                text = "no validation score"
            else:
                self.best = score if self.best is None else max(self.best, score)
                budget = self.live[2](trial.config)
                text = f"validation {score:.2f} at iteration {int(at)}/{budget}"
                text += "" if int(at) >= budget else " (stopped by ASHA)"
            self._line(trial, text)

        def on_trial_error(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self._line(trial, "[red]failed[/]")

        def _line(self, trial: Any, text: str) -> None:
            if self.live is None:
                return
            live_progress, live_bar, _ = self.live
            live_progress.console.print(
                f"{trial.trial_id} {_describe_params(trial.config)}: {text}"
            )
            self.done += 1
            info = "" if self.best is None else f"best validation {self.best:.2f}"
            live_progress.update(live_bar, completed=self.done, info=info)

    return _TrialProgress((progress, bar, budget_of))


@contextmanager
def _trial_progress(
    enabled: bool, samples: int, console: Any, budget_of: Callable[[Mapping[str, Any]], int]
) -> Iterator[Any]:
    """The progress callback (``None`` when disabled), its bar stopped on the way out."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn("[bold]trials[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console or Console(stderr=True),
    )
    bar = progress.add_task("sweep", total=samples, info="")
    with progress:
        yield _progress_callback(progress, bar, budget_of)


@contextmanager
def _local_ray(cpus: int) -> Iterator[None]:
    """A local Ray for the sweep (``cpus`` CPUs), shut down on the way out whatever happens;
    a Ray already running in this process is used as it is and left running. Tune's console
    tables and its Ctrl-C handler are off meanwhile: the caller reports progress, and Ctrl-C
    reaches the caller as ``KeyboardInterrupt`` (after Ray is shut down)."""
    import ray

    saved = {k: os.environ.get(k) for k in ("RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_SIGINT_HANDLER")}
    os.environ.update(RAY_AIR_NEW_OUTPUT="0", TUNE_DISABLE_SIGINT_HANDLER="1")
    started = False
    try:
        if not ray.is_initialized():
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
            started = True
        yield
    finally:
        if started:
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tune_policy(
    task: SweepTask,
    base: PolicyTrainConfig,
    space: Mapping[str, Distribution],
    *,
    num_samples: int,
    output_dir: Path,
    eval_every: int = 5,
    grace_period: int | None = None,
    reduction_factor: float = 2.0,
    concurrency: int = 2,
    seed: int = 0,
    include_base: bool = False,
    json_path: Path | None = None,
    png_path: Path | None = None,
    progress: bool = False,
    console: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the sweep, evaluate the winner once on test, write JSON and PNG; JSON-ready.

    ``base`` (its ``algo`` is the sweep's) is what every trial starts from; ``space`` the
    sampled overrides (checked first: :func:`check_space`). ``num_samples`` configs are drawn
    with ``seed``; at most ``concurrency`` trials run at once, one CPU each. ASHA compares
    trials on the validation score at ``grace_period`` iterations (default ``2 *
    eval_every``), then at ``reduction_factor`` times that, and so on, up to the longest
    budget; the trials below the top ``1 / reduction_factor`` at a milestone stop. ASHA is
    asynchronous: which trials stop can depend on timing, the sampled configs do not.
    ``include_base``: the first trial runs ``base``'s own values of the sampled settings
    (one of the ``num_samples``), so the sweep says how the current choice compares.

    ``output_dir`` gets the winner's checkpoint (``checkpoint-<algo>/<version>``) and, by
    default, ``tune_policy.json`` and ``tune_policy.png`` (``json_path``, ``png_path``).
    ``extra`` is merged into the JSON (e.g. the machine it ran on).
    """
    if num_samples < 1 or eval_every < 1 or concurrency < 1:
        raise ValueError(
            "need num_samples, eval_every and concurrency >= 1, got "
            f"{num_samples}, {eval_every}, {concurrency}"
        )
    if reduction_factor <= 1:
        raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
    base = sampled_config(base, {})
    check_space(space, base, fixed=task.fixed_fields, check=task.check)
    task.check(base)
    horizon = max(max_iterations(space, base), base.iterations if include_base else 0)
    grace = min(grace_period or 2 * eval_every, horizon)
    if grace < 1:
        raise ValueError(f"grace_period must be >= 1, got {grace_period}")
    output_dir = Path(output_dir)
    json_path = json_path or output_dir / "tune_policy.json"
    png_path = png_path or output_dir / "tune_policy.png"
    output_dir.mkdir(parents=True, exist_ok=True)
    base_point = {name: base.to_dict()[name] for name in space} if include_base else None
    description = task.describe()
    started = time.perf_counter()
    storage = Path(tempfile.mkdtemp(prefix=".ray-tune-", dir=Path(output_dir).resolve()))
    try:
        budget_of = lambda params: sampled_config(base, params).iterations  # noqa: E731
        with (
            _local_ray(concurrency),
            _trial_progress(progress, num_samples, console, budget_of) as callback,
        ):
            records = _search(
                task,
                base,
                space,
                num_samples=num_samples,
                storage=storage,
                eval_every=eval_every,
                grace=grace,
                horizon=horizon,
                reduction_factor=reduction_factor,
                concurrency=concurrency,
                seed=seed,
                base_point=base_point,
                callback=callback,
            )
        search_s = time.perf_counter() - started
        winner = choose_winner(records)
        assert winner.checkpoint is not None
        kept = _keep_checkpoint(Path(winner.checkpoint), output_dir)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    t0 = time.perf_counter()
    ckpt = load_policy_checkpoint(kept)
    test = task.test(ckpt.policy)  # the one and only test evaluation
    test_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "algo": base.algo,
        "task": description,
        "sweep": {
            "samples": num_samples,
            "space": {name: dist.to_json() for name, dist in space.items()},
            "base_config": base.to_dict(),
            "metric": f"{METRIC}: mean return on validation only",
            "eval_every": eval_every,
            "scheduler": {
                "name": "ASHA",
                "time_attr": "iteration",
                "grace_period": grace,
                "reduction_factor": reduction_factor,
                "max_t": horizon,
            },
            "concurrency": concurrency,
            "cpus_per_trial": 1,
            "seed": seed,
            "base_point": base_point,
            "selection": "best last-reported validation return among trials that ran their "
            "whole budget; test users or seeds were never looked at for it",
        },
        "trials": [{**r.to_json(), "base_point": r.params == base_point} for r in records],
        "winner": {
            "trial_id": winner.trial_id,
            "params": winner.params,
            "config": ckpt.config.to_dict(),
            "validation": winner.reports[-1],
            "checkpoint": str(kept),
        },
        # The winner's, once: no other trial is ever evaluated on test.
        "test": {"trial_id": winner.trial_id, **test},
        "timing_s": {"search": search_s, "test": test_s, "total": time.perf_counter() - started},
        **dict(extra or {}),
    }
    out = dict(_finite(out))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    plot_sweep(out, png_path)
    out["json"], out["png"] = str(json_path), str(png_path)
    return out


def _search(
    task: SweepTask,
    base: PolicyTrainConfig,
    space: Mapping[str, Distribution],
    *,
    num_samples: int,
    storage: Path,
    eval_every: int,
    grace: int,
    horizon: int,
    reduction_factor: float,
    concurrency: int,
    seed: int,
    base_point: dict[str, Any] | None,
    callback: Any,
) -> list[TrialRecord]:
    """The Tune run itself: every trial's record, in trial order."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(
        tune.with_parameters(_trial, task=task, base=base, eval_every=eval_every), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={name: dist.sampler() for name, dist in space.items()},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=num_samples,
            max_concurrent_trials=concurrency,
            scheduler=ASHAScheduler(
                time_attr="iteration",
                max_t=horizon,
                grace_period=grace,
                reduction_factor=reduction_factor,
            ),
            search_alg=BasicVariantGenerator(
                points_to_evaluate=None if base_point is None else [base_point],
                random_state=seed,
            ),
        ),
        run_config=tune.RunConfig(
            name="sweep",
            storage_path=str(storage),
            verbose=0,
            callbacks=[callback] if callback is not None else None,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    grid = tuner.fit()
    records = [_record(grid[i], base) for i in range(len(grid))]
    return sorted(records, key=lambda r: r.trial_id)


def _keep_checkpoint(path: Path, output_dir: Path) -> Path:
    """Copy the winner's checkpoint out of Tune's storage to
    ``output_dir/<artifact name>/<version>`` (what ``recsys evaluate env`` and ``--resume``
    take), leaving Tune's own bookkeeping files behind."""
    manifest = json.loads((path / "manifest.json").read_text())
    dest = output_dir / str(manifest["name"]) / str(manifest["version"])
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns(".*"))
    return dest


# ---- the figure ----------------------------------------------------------------------------


def plot_sweep(result: Mapping[str, Any], png_path: Path) -> None:
    """Validation return against training iteration, one line per trial (dashed and ending
    in a cross where the scheduler stopped it), the winner drawn thick with its CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    winner = result["winner"]["trial_id"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for trial in result["trials"]:
        rows: Sequence[Mapping[str, float]] = trial["validation"]
        if not rows:
            continue
        x = [r["iteration"] for r in rows]
        y = [r[METRIC] for r in rows]
        label = _describe_params(trial["params"])
        if trial["trial_id"] == winner:
            ax.fill_between(
                x,
                [r["validation_ci_low"] for r in rows],
                [r["validation_ci_high"] for r in rows],
                color="#d62728",
                alpha=0.15,
            )
            ax.plot(x, y, color="#d62728", lw=2.8, marker="o", label=f"winner: {label}", zorder=5)
        elif trial["stopped_early"]:
            ax.plot(x, y, color="0.55", lw=1, ls="--", marker=".", alpha=0.8)
            ax.plot(x[-1:], y[-1:], color="0.35", marker="x", ms=8, ls="none")
        else:
            ax.plot(x, y, lw=1.2, marker=".", alpha=0.85, label=label)
    if any(t["stopped_early"] for t in result["trials"]):
        ax.plot([], [], color="0.55", ls="--", marker="x", label="stopped early (ASHA)")
    test = result.get("test", {}).get("return")
    title = f"{result['algo']} sweep: {len(result['trials'])} trials, validation return"
    if test:
        title += (
            f"\nwinner on test: {test['mean']:.1f} [{test['ci_low']:.1f}, {test['ci_high']:.1f}]"
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("mean validation return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
