"""``recsys.serving.app:app`` is what ``serve run`` and KubeRay's ``serveConfigV2`` import.

The import must bind the ingress to settings from the environment without starting Ray (the
unit conftest makes ``ray.init`` raise), since Serve imports it inside its own processes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError
from ray import serve

from recsys.config import Settings


def _app_module() -> ModuleType:
    return importlib.import_module("recsys.serving.app")


def _app_under(env: dict[str, str], cwd: Path) -> Any:
    """Re-import the module under ``env`` in ``cwd``; leave it bound to the ambient env after."""
    module = _app_module()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            mp.chdir(cwd)
            return importlib.reload(module).app
    finally:
        importlib.reload(module)


def _bound_settings(app: Any) -> tuple[Settings, Any]:
    # Serve keeps the bound deployment privately; its init args are what replicas receive.
    deployment = app._bound_deployment
    (settings_json,) = deployment.init_args
    return Settings.model_validate_json(settings_json), deployment


def test_app_is_a_bound_serve_application() -> None:
    app = _app_module().app

    assert isinstance(app, serve.Application)
    _, deployment = _bound_settings(app)
    assert deployment.name == "RecsysIngress"


def test_env_settings_reach_the_replicas(tmp_path: Path) -> None:
    app = _app_under(
        {
            "RECSYS_POLICY__NAME": "myopic",
            "RECSYS_SERVING__REPLICAS": "3",
            "RECSYS_STORE__URL": "redis://redis:6379/0",
            "RECSYS_ARTIFACTS__ROOT": "models",
        },
        tmp_path,
    )

    settings, deployment = _bound_settings(app)
    assert settings.policy.name == "myopic"
    assert settings.store.url == "redis://redis:6379/0"
    assert deployment.num_replicas == 3
    # Replicas may start elsewhere, so a relative root is pinned where the import ran.
    assert settings.artifacts.root == (tmp_path / "models").resolve()
    assert settings.artifacts.root.is_absolute()


def test_bad_env_setting_fails_the_import(tmp_path: Path) -> None:
    """Serve then reports the deploy as failed, instead of replicas crash-looping."""
    with pytest.raises(ValidationError, match=r"policy\.name"):
        _app_under({"RECSYS_POLICY__NAME": "bogus"}, tmp_path)
