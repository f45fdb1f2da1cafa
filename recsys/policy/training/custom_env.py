"""A user's environment by import path: ``--env module:factory`` for training and evaluation.

:class:`ImportedEnvFactory` names the factory (``worker_index -> BatchSlateEnv``) by its
import path instead of holding it, so it pickles as a string and every Ray rollout actor
imports the factory itself. :meth:`ImportedEnvFactory.resolve` imports it once in the caller
first, so a typo, a missing module or an attribute that is not callable is a
:class:`CustomEnvError` naming what is wrong before any worker starts; a factory that raises
or returns something other than a
:class:`~recsys.policy.training.envs.BatchSlateEnv` is one too. As with ``uvicorn
module:app``, the current directory is importable (and so is every directory given as
``search_path``, on the workers too).

A Gymnasium env's factory returns it wrapped in
:class:`~recsys.policy.training.envs.GymSlateEnv`, whose declared per-slot signal mapping
(``signals=``, ``reward_key=``, or the env's own ``slate_signals`` / ``slot_reward_key``)
travels with it: every worker's env reads the same keys.

``module:factory@PYTHON`` runs the env under another interpreter (e.g. the simulator's own
virtualenv, with its old dependencies) in a child process, behind
:class:`~recsys.policy.training.bridge.ProcessEnv`; there the factory's env speaks plain
arrays (see :mod:`recsys.policy.training.bridge`) and nothing is imported here.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recsys.policy.training.envs import BatchSlateEnv
from recsys.types import RecsysError

__all__ = ["CustomEnvError", "ImportedEnvFactory"]


class CustomEnvError(RecsysError, ValueError):
    """A custom environment cannot be imported, built, or is not a slate env."""


@dataclass(frozen=True)
class ImportedEnvFactory:
    """``module:attribute`` of an env factory ``worker_index -> BatchSlateEnv`` (picklable).

    ``search_path``: directories put on ``sys.path`` before importing (where the caller
    found the module), so a Ray worker started elsewhere finds it too. ``python``: an
    interpreter to run the env under, in its own process (``None``: in this process).
    """

    spec: str
    search_path: tuple[str, ...] = ()
    python: str | None = None

    @classmethod
    def resolve(cls, spec: str, search_path: Sequence[str] | None = None) -> ImportedEnvFactory:
        """Check ``spec`` (``module:factory``) imports to a callable, here and now.

        ``search_path`` defaults to the current directory. ``module:factory@PYTHON`` is only
        checked for its form and its interpreter here (the module is the child's to import,
        so it fails when the first env is built).
        """
        paths = tuple(os.path.abspath(p) for p in (search_path or [os.getcwd()]))
        target, at, python = spec.strip().partition("@")
        factory = cls(target.strip(), paths, _interpreter(python.strip()) if at else None)
        if factory.python is None:
            factory.load()
        else:
            factory._parts()
        return factory

    def _parts(self) -> tuple[str, str]:
        module, sep, attr = self.spec.partition(":")
        if not sep or not module or not attr:
            raise CustomEnvError(
                f"--env must be module:factory (e.g. my_envs:make_env), got {self.spec!r}"
            )
        return module, attr

    def load(self) -> Callable[[int], Any]:
        """Import the factory (``module`` may be dotted, ``factory`` an attribute path)."""
        module_name, attr = self._parts()
        for path in reversed(self.search_path):
            if path not in sys.path:
                sys.path.insert(0, path)
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise CustomEnvError(f"cannot import {module_name!r} for --env: {exc}") from exc
        except Exception as exc:  # the module's own code failed while importing
            raise CustomEnvError(
                f"importing {module_name!r} for --env raised {type(exc).__name__}: {exc}"
            ) from exc
        for name in attr.split("."):
            if not hasattr(obj, name):
                raise CustomEnvError(f"{module_name!r} has no attribute {attr!r} (--env)")
            obj = getattr(obj, name)
        if not callable(obj):
            raise CustomEnvError(f"{self.spec} is a {type(obj).__name__}, not a callable")
        factory: Callable[[int], Any] = obj
        return factory

    def __call__(self, worker_index: int) -> BatchSlateEnv:
        """Build worker ``worker_index``'s env; a clear error when that fails."""
        if self.python is not None:
            from recsys.policy.training.bridge import ProcessEnv

            self._parts()
            return ProcessEnv(
                self.spec,
                python=self.python,
                search_path=self.search_path,
                worker_index=worker_index,
            )
        factory = self.load()
        try:
            env = factory(worker_index)
        except Exception as exc:
            raise CustomEnvError(
                f"{self.spec}({worker_index}) raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(env, BatchSlateEnv):
            raise CustomEnvError(
                f"{self.spec}({worker_index}) returned a {type(env).__name__}, not a slate env "
                "(batch_size, slate_size, reset(seed), step(slates); wrap a Gymnasium env in "
                "recsys.policy.training.envs.GymSlateEnv, with signals={...} naming the info "
                "keys of its per-slot signals if it sends any)"
            )
        return env


def _interpreter(python: str) -> str:
    """The ``@PYTHON`` of an ``--env``: a path (made absolute, links kept: a virtualenv's
    ``python`` is one) or a name on ``PATH``; it must be an executable file."""
    if not python:
        raise CustomEnvError("--env module:factory@PYTHON needs an interpreter after '@'")
    found = os.path.abspath(python) if os.sep in python else shutil.which(python)
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise CustomEnvError(f"--env ...@{python}: no executable Python interpreter there")
    return found
