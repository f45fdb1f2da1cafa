"""The Helm chart ``helm/recsys``, rendered offline by Helm's own engine (helm-python-sdk).

Every case (default values and each file in ``helm/recsys/ci/``) is linted and rendered, the
built-in kinds are checked against Kubernetes' OpenAPI schemas (kubernetes-validate, strict),
RayService and RayJob against KubeRay's CRDs, and the wiring the app depends on is asserted:
probes, hardened containers, settings as RECSYS_* env vars that ``recsys.config.Settings``
accepts, secrets only by reference, commands that the ``recsys`` CLI really has, and a Serve
import path that resolves to the application.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "recsys"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
SHARED_CRDS = ROOT.parent / "shared" / "schemas" / "kuberay"
BUNDLED_CRDS = Path(__file__).resolve().parent / "data" / "kuberay"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml"}
# Kinds that kubernetes-validate has no schema for; anything else must validate.
CUSTOM_KINDS = {
    ("ray.io/v1", "RayService"),
    ("ray.io/v1", "RayJob"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "rel", "recsys"
FULLNAME = "rel-recsys"
CASES = ["default", *(p.stem for p in CI_VALUES)]

Doc = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def _case_values(case: str) -> dict[str, Any] | None:
    if case == "default":
        return None
    # Parsed the way `helm -f FILE` parses it.
    return helm.values_from_yaml((CHART / "ci" / f"{case}.yaml").read_text())


def _render(values: dict[str, Any] | None) -> list[Doc]:
    manifests = _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    docs: list[Doc] = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@functools.cache
def _rendered(case: str) -> tuple[Doc, ...]:
    return tuple(_render(_case_values(case)))


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docs(case: str) -> list[Doc]:
    return copy.deepcopy(list(_rendered(case)))


@pytest.fixture
def values(case: str) -> dict[str, Any]:
    """The values a release of this case would use: defaults coalesced with the file."""
    return _chart().merge_values(_case_values(case))


def _of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in _of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _container(workload: Doc, name: str) -> Doc:
    """The named container of a Deployment's pod template."""
    containers: list[Doc] = workload["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def _pod_specs(node: Any, where: str = "") -> Iterator[tuple[str, Doc]]:
    """Every pod spec inside a manifest (Deployment, RayService groups, RayJob, submitter)."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield where, node
        for key, child in node.items():
            yield from _pod_specs(child, f"{where}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _pod_specs(child, f"{where}[{i}]")


def _containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(where, pod spec, container) for every container and init container."""
    for doc in docs:
        for where, pod in _pod_specs(doc, f"{doc['kind']}/{doc['metadata']['name']}"):
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                yield f"{where}:{c['name']}", pod, c


# --- lint and schemas ------------------------------------------------------------------------


def test_chart_metadata() -> None:
    meta = _chart().metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "recsys"
    assert _chart().schema is not None, "values.schema.json is missing"
    assert {t["name"] for t in _chart().templates} >= {
        "templates/NOTES.txt",
        "templates/_helpers.tpl",
    }


def test_chart_lints_clean(case: str) -> None:
    report = helm.lint(CHART, _case_values(case), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_values_schema_is_draft07_and_accepts_every_case(case: str) -> None:
    schema = _chart().schema
    assert schema is not None
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    # Helm validates the coalesced values; so does jsonschema, independently of Helm.
    jsonschema.Draft7Validator(schema).validate(_chart().merge_values(_case_values(case)))


def test_builtin_kinds_match_kubernetes_openapi(docs: list[Doc]) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert {("v1", "ConfigMap"), ("apps/v1", "Deployment")} <= kinds
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """A CRD schema that also rejects unknown fields (the API server would silently prune
    them, so a misspelt field would just vanish) except where the CRD keeps unknown ones."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _crd_dir() -> Path:
    return SHARED_CRDS if (SHARED_CRDS / CRD_FILES["RayService"]).is_file() else BUNDLED_CRDS


@functools.cache
def _crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((_crd_dir() / CRD_FILES[kind]).read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(served["schema"]["openAPIV3Schema"]))


def _validate_custom(doc: Doc) -> None:
    version = doc["apiVersion"].split("/")[1]
    _crd_validator(doc["kind"], version).validate(doc)


def test_bundled_crds_are_kuberays_and_match_shared_ones() -> None:
    """The bundled copies are the CRDs the tests need; beside shared/ (not on a clean clone)
    they are also byte for byte the shared ones."""
    for kind, name in CRD_FILES.items():
        crd = yaml.safe_load((BUNDLED_CRDS / name).read_text())
        assert crd["kind"] == "CustomResourceDefinition"
        assert crd["spec"]["names"]["kind"] == kind
        assert any(v["name"] == "v1" for v in crd["spec"]["versions"])
        shared = SHARED_CRDS / name
        if shared.is_file():
            assert (BUNDLED_CRDS / name).read_bytes() == shared.read_bytes(), name


def test_ray_resources_match_kuberay_crds(docs: list[Doc], values: dict[str, Any]) -> None:
    ray_docs = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    expected = {"RayService"} if values["mode"] == "rayservice" else set()
    if values["trainJob"]["enabled"]:
        expected.add("RayJob")
    assert sorted(d["kind"] for d in ray_docs) == sorted(expected)
    for doc in ray_docs:
        _validate_custom(doc)


def test_crd_validation_rejects_a_misspelt_field() -> None:
    """The strict CRD check bites: a field KubeRay does not know fails, where the API server
    would silently drop it."""
    doc = _one(list(_rendered("full-values")), "RayService")
    doc = copy.deepcopy(doc)
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        _validate_custom(doc)
    job = copy.deepcopy(_one(list(_rendered("full-values")), "RayJob"))
    job["spec"]["entrypoint"] = ["recsys", "train"]
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(job)


# --- pods ------------------------------------------------------------------------------------


def test_every_container_is_hardened(docs: list[Doc]) -> None:
    seen = 0
    for where, pod, c in _containers(docs):
        seen += 1
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        # A read-only root needs a writable /tmp: an emptyDir of this pod.
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1, f"{where}: no /tmp mount"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert "emptyDir" in volumes[tmp[0]["name"]], where
        assert c.get("resources", {}).get("requests"), f"{where}: no resource requests"
        assert c.get("resources", {}).get("limits", {}).get("memory"), f"{where}: no memory limit"
    assert seen >= 2
    # KubeRay injects the autoscaler sidecar itself; the chart hands it the same context.
    for doc in _of_kind(docs, "RayService"):
        options = doc["spec"]["rayClusterConfig"].get("autoscalerOptions")
        if doc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"]:
            assert options["securityContext"]["readOnlyRootFilesystem"] is True
            assert options["securityContext"]["capabilities"]["drop"] == ["ALL"]


def _probe_path(container: Doc, kind: str) -> str:
    return str(container[kind]["httpGet"]["path"])


def test_serving_probes(docs: list[Doc], values: dict[str, Any]) -> None:
    if values["mode"] == "deployment":
        serve = _one(docs, "Deployment", f"{FULLNAME}-serve")
        c = _container(serve, "serve")
        assert _probe_path(c, "livenessProbe") == "/healthz"
        assert _probe_path(c, "readinessProbe") == "/readyz"
        assert _probe_path(c, "startupProbe") == "/healthz"
        port_names = {p["name"] for p in c["ports"]}
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c[kind]["httpGet"]["port"] in port_names
    else:
        cluster = _one(docs, "RayService")["spec"]["rayClusterConfig"]
        (worker,) = cluster["workerGroupSpecs"]
        c = worker["template"]["spec"]["containers"][0]
        assert _probe_path(c, "readinessProbe") == "/readyz"
        assert c["readinessProbe"]["httpGet"]["port"] == "serve"
        assert "livenessProbe" in c
        # The Serve app is deployed only once the head is ready: an app-level readiness
        # probe on the head would deadlock the RayService.
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert _probe_path(head, "readinessProbe") not in {"/readyz", "/healthz"}
        assert "livenessProbe" in head


def _recsys_containers(docs: list[Doc]) -> list[tuple[str, Doc]]:
    """Containers that run recsys code (all but the RayJob's `ray job submit` pod)."""
    return [(w, c) for w, _, c in _containers(docs) if c["name"] != "ray-job-submitter"]


def test_settings_reach_every_container_by_configmap_and_secret_refs(
    docs: list[Doc], values: dict[str, Any]
) -> None:
    (config,) = [d for d in _of_kind(docs, "ConfigMap") if d["metadata"]["name"] == FULLNAME]
    store = values["store"]
    containers = _recsys_containers(docs)
    assert containers
    for where, c in containers:
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        assert refs == [FULLNAME], where
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["HOME"]["value"] == "/tmp", where
        if store["existingSecret"]:
            assert env["RECSYS_STORE__URL"]["valueFrom"]["secretKeyRef"] == {
                "name": store["existingSecret"],
                "key": store["existingSecretKey"],
            }, where
        else:
            assert "RECSYS_STORE__URL" not in env, where
        for extra in values["extraSecretEnv"]:
            assert env[extra["name"]]["valueFrom"]["secretKeyRef"] == {
                "name": extra["secretName"],
                "key": extra["key"],
            }, where
        secret_refs = {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
        assert set(values["extraEnvFromSecrets"]) <= secret_refs, where
        assert all("value" not in e or not e["name"].startswith("RECSYS_") for e in env.values())
    if store["existingSecret"]:
        assert "RECSYS_STORE__URL" not in config["data"]
    else:
        assert config["data"]["RECSYS_STORE__URL"] == store["url"]
    assert config["data"]["RECSYS_STREAM__BOOTSTRAP"] == values["stream"]["bootstrap"]


_CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@]*@", re.IGNORECASE)
_SECRET_WORDS = re.compile(r"password|passwd|secret|token|credential", re.IGNORECASE)


def test_no_secret_values_in_configmaps(docs: list[Doc]) -> None:
    configmaps = _of_kind(docs, "ConfigMap")
    assert configmaps
    for cm in configmaps:
        for key, value in cm.get("data", {}).items():
            assert not _CREDENTIAL_URL.search(value), f"{cm['metadata']['name']}/{key}"
            if key.startswith("RECSYS_"):
                assert not _SECRET_WORDS.search(key), key
    assert not _of_kind(docs, "Secret"), "the chart never creates Secrets: values hold names"


def test_api_keys_are_mounted_into_serving_pods_only(
    docs: list[Doc], values: dict[str, Any]
) -> None:
    """The keys Secret is a read-only volume of the pods that answer HTTP; the settings name
    files inside it, and nothing else (env, ConfigMap) carries a key."""
    auth = values["auth"]
    (config,) = [d for d in _of_kind(docs, "ConfigMap") if d["metadata"]["name"] == FULLNAME]
    data = config["data"]
    serving = {"serve", "ray-head", "ray-worker"}
    for where, pod, c in _containers(docs):
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        answers_http = where.startswith(("RayService/", f"Deployment/{FULLNAME}-serve"))
        if auth["existingSecret"] and answers_http and c["name"] in serving:
            assert mounts["api-keys"]["readOnly"] is True, where
            assert mounts["api-keys"]["mountPath"] == "/etc/recsys/api-keys", where
            assert volumes["api-keys"]["secret"]["secretName"] == auth["existingSecret"], where
        else:
            assert "api-keys" not in mounts, where
    if auth["existingSecret"]:
        assert data["RECSYS_SERVING__AUTH__ADMIN_KEYS_FILE"] == (
            f"/etc/recsys/api-keys/{auth['adminKeysKey']}"
        )
        assert ("RECSYS_SERVING__AUTH__CLIENT_KEYS_FILE" in data) == bool(auth["clientKeysKey"])
    else:
        assert not any(k.endswith("_KEYS_FILE") for k in data)
    assert json.loads(data["RECSYS_SERVING__AUTH__PROTECT"]) == auth["protect"]
    assert json.loads(data["RECSYS_POLICY__TRAFFIC"]) == values["settings"]["policy"]["traffic"]
    assert (
        json.loads(data["RECSYS_SERVING__CORS_ORIGINS"])
        == (values["settings"]["serving"]["corsOrigins"])
    )


def test_protected_routes_without_a_keys_secret_are_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"auth\.protect needs API keys"):
        _render({"auth": {"protect": ["recommend"]}})


def test_a_store_url_with_a_password_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"store\.url carries credentials"):
        _render({"store": {"url": "redis://:hunter2@redis:6379/0"}})
    # With the URL in a Secret, the placeholder url is neither checked nor rendered.
    docs = _render(
        {"store": {"url": "redis://:hunter2@redis:6379/0", "existingSecret": "redis-auth"}}
    )
    assert "hunter2" not in yaml.safe_dump_all(docs)


def _setting_paths() -> set[str]:
    from pydantic import BaseModel

    from recsys.config import Settings

    paths: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
            else:
                paths.add(f"{prefix}{name.upper()}")

    walk(Settings, "RECSYS_")
    return paths


def test_configmap_settings_are_settings_recsys_accepts(
    docs: list[Doc], values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.config import Settings

    (config,) = [d for d in _of_kind(docs, "ConfigMap") if d["metadata"]["name"] == FULLNAME]
    data: dict[str, str] = config["data"]
    unknown = {k for k in data if k.startswith("RECSYS_")} - _setting_paths()
    assert unknown == set(), f"not fields of recsys.config.Settings: {sorted(unknown)}"
    ray_env = {k: v for k, v in data.items() if not k.startswith("RECSYS_")}
    fast = values["settings"]["serving"].get("throughputOptimized", True)
    expected = {"RAY_worker_niceness": "0"}
    if fast:
        expected |= {
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
        }
    assert ray_env == expected

    for key in [k for k in os.environ if k.startswith("RECSYS_")]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        if key.startswith("RECSYS_"):
            monkeypatch.setenv(key, value)
    # What the secretKeyRefs would bring (placeholders for the Secrets' contents).
    if values["store"]["existingSecret"]:
        monkeypatch.setenv("RECSYS_STORE__URL", "redis://:pw@redis:6379/0")
    for extra in values["extraSecretEnv"]:
        placeholder = "kafka:9092" if extra["name"] == "RECSYS_STREAM__BOOTSTRAP" else "x"
        monkeypatch.setenv(extra["name"], placeholder)
    settings = Settings()

    serving = values["settings"]["serving"]
    assert settings.serving.host == "0.0.0.0"
    assert settings.serving.port == serving["port"]
    assert settings.serving.max_slate_size == serving["maxSlateSize"]
    assert settings.serving.throughput_optimized is fast
    assert settings.policy.name == values["settings"]["policy"]["name"]
    assert str(settings.artifacts.root) == (
        f"{values['storage']['mountPath']}/{values['storage']['artifactsDir']}"
    )
    assert settings.store.url.startswith(("redis://", "rediss://", "unix://"))
    assert settings.stream.bootstrap


# --- modes -----------------------------------------------------------------------------------


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_mode_decides_how_serving_runs(docs: list[Doc], values: dict[str, Any]) -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}
    if values["mode"] == "deployment":
        assert not _of_kind(docs, "RayService")
        serve = deployments[f"{FULLNAME}-serve"]
        assert serve["spec"]["replicas"] == values["deployment"]["replicas"]
        c = _container(serve, "serve")
        port = values["settings"]["serving"]["port"]
        assert c["command"] == ["recsys", "serve", "--host", "0.0.0.0", "--port", str(port)]
        service = _one(docs, "Service", FULLNAME)
        pod_labels = serve["spec"]["template"]["metadata"]["labels"]
        assert _labels_match(service["spec"]["selector"], pod_labels)
        assert _labels_match(serve["spec"]["selector"]["matchLabels"], pod_labels)
        assert service["spec"]["ports"][0]["port"] == values["service"]["port"]
        serving_pods = [pod_labels]
    else:
        assert f"{FULLNAME}-serve" not in deployments
        spec = _one(docs, "RayService")["spec"]
        # KubeRay owns the serve Service (its selector follows the active cluster).
        assert spec["serveService"]["metadata"]["name"] == FULLNAME
        assert spec["serveService"]["spec"]["ports"][0]["port"] == values["service"]["port"]
        assert not [d for d in _of_kind(docs, "Service") if d["metadata"]["name"] == FULLNAME]
        cluster = spec["rayClusterConfig"]
        (worker,) = cluster["workerGroupSpecs"]
        w = values["rayService"]["worker"]
        assert (worker["replicas"], worker["minReplicas"], worker["maxReplicas"]) == (
            w["replicas"],
            w["minReplicas"],
            w["maxReplicas"],
        )
        assert cluster["enableInTreeAutoscaling"] is values["rayService"]["enableInTreeAutoscaling"]
        serving_pods = [worker["template"]["metadata"]["labels"]]

    pdbs = _of_kind(docs, "PodDisruptionBudget")
    if values["podDisruptionBudget"]["enabled"]:
        (pdb,) = pdbs
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(_labels_match(selector, labels) for labels in serving_pods)
        # Not the updater or anything else.
        others = [
            d["spec"]["template"]["metadata"]["labels"]
            for d in _of_kind(docs, "Deployment")
            if not d["metadata"]["name"].endswith("-serve")
        ]
        assert not any(_labels_match(selector, labels) for labels in others)
    else:
        assert not pdbs


def test_ingress_and_service_monitor_point_at_rendered_services(
    docs: list[Doc], values: dict[str, Any]
) -> None:
    ingresses = _of_kind(docs, "Ingress")
    assert len(ingresses) == int(values["ingress"]["enabled"])
    for ing in ingresses:
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {
                    "name": FULLNAME,
                    "port": {"number": values["service"]["port"]},
                }
    monitors = _of_kind(docs, "ServiceMonitor")
    assert len(monitors) == int(values["serviceMonitor"]["enabled"])
    for sm in monitors:
        selector = sm["spec"]["selector"]["matchLabels"]
        (target,) = [
            s for s in _of_kind(docs, "Service") if _labels_match(selector, s["metadata"]["labels"])
        ]
        port_names = {p["name"] for p in target["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names
        assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
        assert _labels_match(values["serviceMonitor"]["labels"], sm["metadata"]["labels"])


def test_serve_config_names_the_application_and_autoscales(
    docs: list[Doc], values: dict[str, Any]
) -> None:
    if values["mode"] != "rayservice":  # deployment mode: `recsys serve`, no Serve config
        assert not _of_kind(docs, "RayService")
        return
    config = yaml.safe_load(_one(docs, "RayService")["spec"]["serveConfigV2"])
    sc = values["rayService"]["serveConfig"]
    (application,) = config["applications"]
    assert application["import_path"] == "recsys.serving.app:app"
    assert application["name"] == sc["applicationName"]
    assert config["http_options"] == {
        "host": "0.0.0.0",
        "port": values["settings"]["serving"]["port"],
    }
    (deployment,) = application["deployments"]
    assert deployment["name"] == sc["deploymentName"]
    assert "num_replicas" not in deployment, "autoscaling_config and num_replicas exclude"
    a = sc["autoscaling"]
    assert deployment["autoscaling_config"] == {
        "min_replicas": a["minReplicas"],
        "max_replicas": a["maxReplicas"],
        "target_ongoing_requests": a["targetOngoingRequests"],
        "upscale_delay_s": a["upscaleDelayS"],
        "downscale_delay_s": a["downscaleDelayS"],
    }


def _app_module(import_path: str) -> tuple[ModuleType, str]:
    module_name, _, attr = import_path.partition(":")
    spec = importlib.util.find_spec(module_name)
    assert spec is not None, f"serveConfigV2 imports {module_name}, which does not exist"
    return importlib.import_module(module_name), attr


def test_serve_import_path_resolves_to_the_application() -> None:
    config = yaml.safe_load(_one(list(_rendered("default")), "RayService")["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    module, attr = _app_module(application["import_path"])
    app = getattr(module, attr)
    from ray import serve

    assert isinstance(app, serve.Application)
    # The deployment the config tunes must be the one the application binds.
    (deployment,) = application["deployments"]
    assert app._bound_deployment.name == deployment["name"]


# --- updater, learner, training --------------------------------------------------------------


def test_updater_runs_the_cli_updater(docs: list[Doc], values: dict[str, Any]) -> None:
    names = {d["metadata"]["name"] for d in _of_kind(docs, "Deployment")}
    if not values["updater"]["enabled"]:
        assert f"{FULLNAME}-updater" not in names
        return
    updater = _one(docs, "Deployment", f"{FULLNAME}-updater")
    assert updater["spec"]["replicas"] == values["updater"]["replicas"]
    assert values["updater"]["replicas"] <= values["stream"]["partitions"]
    c = _container(updater, "updater")
    assert c["command"] == ["recsys", "updater"]


def test_updater_replicas_beyond_partitions_fail_rendering() -> None:
    with pytest.raises(
        helm.HelmRenderError,
        match=r"updater\.replicas \(7\) must not exceed stream\.partitions \(6\)",
    ):
        _render({"updater": {"replicas": 7}, "stream": {"partitions": 6}})
    # The boundary renders.
    docs = _render({"updater": {"replicas": 6}, "stream": {"partitions": 6}})
    assert _one(docs, "Deployment", f"{FULLNAME}-updater")["spec"]["replicas"] == 6


def test_learner_is_off_by_default_and_behind_its_flag(
    docs: list[Doc], values: dict[str, Any]
) -> None:
    learners = [
        d for d in _of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-learner")
    ]
    assert len(learners) == int(values["learner"]["enabled"])
    assert _chart().values["learner"]["enabled"] is False
    for learner in learners:
        assert learner["spec"]["replicas"] == 1
        c = _container(learner, "learner")
        assert c["command"][:2] == ["/bin/sh", "-c"]
        assert "recsys 'train' 'policy' '--algo' 'slateq'" in c["command"][2]


def test_train_job_runs_train_policy_on_its_cluster(
    docs: list[Doc], values: dict[str, Any]
) -> None:
    jobs = _of_kind(docs, "RayJob")
    assert len(jobs) == int(values["trainJob"]["enabled"])
    for job in jobs:
        entrypoint = job["spec"]["entrypoint"]
        tj = values["trainJob"]
        assert f"recsys train policy --algo {tj['algo']} --workers {tj['workers']}" in entrypoint
        assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
        assert job["spec"]["shutdownAfterJobFinishes"] is tj["shutdownAfterJobFinishes"]


def _cli_commands(docs: list[Doc]) -> list[list[str]]:
    """Every `recsys ...` command line the chart runs."""
    lines: list[list[str]] = []
    for _, _, c in _containers(docs):
        command = c.get("command", [])
        if command[:1] == ["recsys"]:
            lines.append(command)
        elif command[:2] == ["/bin/sh", "-c"]:
            lines.extend(_recsys_in_shell(command[2]))
    for job in _of_kind(docs, "RayJob"):
        lines.extend(_recsys_in_shell(job["spec"]["entrypoint"]))
    return lines


def _recsys_in_shell(script: str) -> list[list[str]]:
    out = []
    for part in re.split(r"&&|\n|;", script):
        tokens = shlex.split(part)
        if tokens[:1] == ["recsys"]:
            out.append(tokens)
    return out


def test_every_recsys_command_exists_in_the_cli(docs: list[Doc]) -> None:
    import typer

    from recsys.cli import app

    root: Any = typer.main.get_command(app)  # a click-style group (typer vendors click)
    lines = _cli_commands(docs)
    assert lines
    for line in lines:
        command = root
        args = line[1:]
        while getattr(command, "commands", None) and args and args[0] in command.commands:
            command = command.commands[args.pop(0)]
        assert not getattr(command, "commands", None), f"{line}: not a full command"
        options = {opt for p in command.params for opt in p.opts}
        for arg in args:
            if arg.startswith("--"):
                assert arg in options, f"{line}: `{command.name}` has no option {arg}"


# --- storage ---------------------------------------------------------------------------------


def test_storage_volume_is_the_claim_or_the_object_store_mirror(
    docs: list[Doc], values: dict[str, Any]
) -> None:
    storage = values["storage"]
    pvcs = _of_kind(docs, "PersistentVolumeClaim")
    data_volumes = [
        v for _, pod in _pod_specs(docs) for v in pod.get("volumes", []) if v["name"] == "data"
    ]
    assert data_volumes
    if storage["type"] == "pvc":
        claim = storage["pvc"]["existingClaim"]
        if claim:
            assert not pvcs
        else:
            (pvc,) = pvcs
            claim = pvc["metadata"]["name"]
            assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
            assert pvc["spec"]["resources"]["requests"]["storage"] == storage["pvc"]["size"]
        assert all(v["persistentVolumeClaim"]["claimName"] == claim for v in data_volumes)
        return
    assert not pvcs
    assert all("emptyDir" in v for v in data_volumes)
    url = storage["objectStore"]["url"].rstrip("/") + "/artifacts"
    root = f"{storage['mountPath']}/{storage['artifactsDir']}"
    for where, pod in _pod_specs(docs):
        names = [c["name"] for c in pod.get("initContainers", [])]
        if "fetch-artifacts" not in names:
            continue
        (fetch,) = [c for c in pod["initContainers"] if c["name"] == "fetch-artifacts"]
        assert fetch["command"][-3:] == ["download", url, root], where
        secret_refs = {e["secretRef"]["name"] for e in fetch["envFrom"] if "secretRef" in e}
        assert storage["objectStore"]["existingSecret"] in secret_refs
    for job in _of_kind(docs, "RayJob"):
        steps = [s.strip() for s in job["spec"]["entrypoint"].split("&&")]
        assert "download" in steps[0]
        assert steps[1].startswith("recsys train policy")
        assert "upload" in steps[2]
        assert url in steps[2]


def _sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "recsys_chart_sync_artifacts", CHART / "files" / "sync_artifacts.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _version(root: Path, name: str, version: str, *, complete: bool = True) -> None:
    path = root / name / version
    path.mkdir(parents=True)
    (path / "tensors.safetensors").write_bytes(b"weights")
    (path / "sub").mkdir()
    (path / "sub" / "items.json").write_text("[]")
    if complete:
        (path / "manifest.json").write_text("{}")


def test_artifact_sync_copies_only_complete_new_versions(tmp_path: Path) -> None:
    sync = _sync_module().sync
    remote, local = tmp_path / "bucket" / "artifacts", tmp_path / "data" / "artifacts"
    _version(remote, "policy-slateq", "20250101T000000Z-aaaaaa")
    _version(remote, "policy-slateq", "20250102T000000Z-bbbbbb", complete=False)
    _version(remote, "retrieval", "20250101T000000Z-cccccc")
    url = remote.as_uri()

    copied = sync("download", url, str(local))
    assert copied == ["policy-slateq/20250101T000000Z-aaaaaa", "retrieval/20250101T000000Z-cccccc"]
    got = local / "policy-slateq" / "20250101T000000Z-aaaaaa"
    assert (got / "sub" / "items.json").read_text() == "[]"
    assert (got / "manifest.json").is_file()
    assert not (local / "policy-slateq" / "20250102T000000Z-bbbbbb").exists()
    assert not [p for p in local.rglob(".*")], "no staging directories left behind"
    assert sync("download", url, str(local)) == []

    _version(local, "policy-slateq", "20250103T000000Z-dddddd")
    assert sync("upload", url, str(local)) == ["policy-slateq/20250103T000000Z-dddddd"]
    assert (remote / "policy-slateq" / "20250103T000000Z-dddddd" / "manifest.json").is_file()
    assert sync("upload", url, str(local)) == []


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values_yaml", "where"),
    [
        ("updater:\n  replicas: three\n", "/updater/replicas"),
        ("stream:\n  partitions: 0\n", "/stream/partitions"),
        ("mode: kubernetes\n", "/mode"),
        ("settings:\n  policy:\n    name: dqn\n", "/settings/policy/name"),
        ("settings:\n  serving:\n    port: '8000'\n", "/settings/serving/port"),
        ("settings:\n  extraEnv:\n    PATH: /bin\n", "PATH"),
        ("securityContext:\n  allowPrivilegeEscalation: true\n", "/securityContext"),
        ("store:\n  url: memory://\n", "/store/url"),
        ("stream:\n  partition: 3\n", "/stream"),
    ],
)
def test_values_schema_rejects_bad_values(tmp_path: Path, values_yaml: str, where: str) -> None:
    path = tmp_path / "bad-values.yaml"
    path.write_text(values_yaml)
    bad = helm.values_from_yaml(path.read_text())
    with pytest.raises(helm.HelmValuesError) as err:
        _chart().render(bad, name=RELEASE, namespace=NAMESPACE)
    assert where in str(err.value)
    with pytest.raises(helm.HelmValuesError):
        _chart().validate_schema(bad)
