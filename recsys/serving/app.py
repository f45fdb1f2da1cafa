"""Importable Ray Serve application: ``serve run recsys.serving.app:app``.

A Serve config (KubeRay's ``serveConfigV2``, ``serve deploy``) names an application by
import path, and Serve imports it wherever the controller runs; so this module reads
:class:`~recsys.config.Settings` from that process's ``RECSYS_*`` environment at import time
and binds the ingress to them. It is a composition root and nothing more: the binding lives
in :func:`recsys.serving.deployment.bind_application`, shared with ``recsys serve``. HTTP host,
port and route prefix belong to the Serve config here, not to ``settings.serving``.
"""

from __future__ import annotations

from recsys.config import load_settings
from recsys.serving.deployment import bind_application

__all__ = ["app"]

app = bind_application(load_settings())
