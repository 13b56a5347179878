"""Scale-out files: the Kubernetes GPU job template on a real Prefect server, the compose file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.integration.prefect_server import PrefectServer

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
TEMPLATE = REPO / "infra" / "k8s" / "gpu-job-template.json"


def test_kubernetes_gpu_pool_from_the_template(tmp_path: Path) -> None:
    server = PrefectServer(tmp_path / "prefect").start()
    try:
        env = {**server.env(), "PATH": f"{BIN}:{os.environ['PATH']}"}
        r = subprocess.run(
            [
                str(BIN / "prefect"),
                "work-pool",
                "create",
                "gpu-k8s",
                "--type",
                "kubernetes",
                "--base-job-template",
                str(TEMPLATE),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        pool = httpx.get(f"{server.api_url}/work_pools/gpu-k8s", timeout=10).json()
    finally:
        server.stop()
    assert pool["type"] == "kubernetes"
    tpl = pool["base_job_template"]
    variables = tpl["variables"]["properties"]
    assert variables["gpu_count"]["default"] == 1
    assert variables["node_selector"]["default"] == {"nvidia.com/gpu.present": "true"}
    assert variables["tolerations"]["default"][0]["key"] == "nvidia.com/gpu"

    # render the job manifest the way the worker does, with overrides for a node pool
    from prefect.utilities.templating import apply_values

    values = {k: v.get("default") for k, v in variables.items()}
    values.update(
        gpu_count=2,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        image="registry.example/drywall-qa:gpu",
        command="prefect flow-run execute",
    )
    manifest = apply_values(tpl["job_configuration"], values)["job_manifest"]
    spec = manifest["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["tolerations"][0]["effect"] == "NoSchedule"
    assert spec["containers"][0]["image"] == "registry.example/drywall-qa:gpu"


def test_compose_file_describes_the_stack() -> None:
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "s3", "worker-cpu", "worker-gpu", "webhook", "deploy"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker-gpu"]["command"].endswith("--pool gpu")
    assert services["worker-cpu"]["command"].endswith("--pool cpu")
    example = (REPO / "infra" / ".env.example").read_text()
    for var in ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "DRYWALL_WEBHOOK_SECRET", "PREFECT_AUTH_STRING"):
        assert f"{var}=" in example
    auth = services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert auth.startswith("${PREFECT_AUTH_STRING:?"), "the server never starts without basic auth"
    assert compose["x-drywall-env"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING")
    assert compose["x-drywall-env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "infra" / dockerfile).read_text()
        assert "torch==2.13.0" in text
        # Data Docs offline: the assets land where Settings.data_docs_assets looks (sys.prefix/share)
        prefix = "/opt/venv" if "VIRTUAL_ENV=/opt/venv" in text else "/usr/local"
        assert "fetch-docs-assets.sh" in text and f"/drywall-docs {prefix}/share/drywall-docs" in text
    assert "cu128" in (REPO / "infra" / "Dockerfile.gpu").read_text()
    values = yaml.safe_load((REPO / "infra" / "k8s" / "prefect-worker-values.yaml").read_text())
    assert values["worker"]["config"] == {"workPool": "gpu", "type": "kubernetes", "limit": 2}
    json.loads(TEMPLATE.read_text())


def _compose() -> dict:
    return yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())


def test_compose_publishes_on_loopback_and_pins_every_image() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"
        for port in svc.get("ports", []):
            assert port.startswith("${DRYWALL_PUBLISH_HOST:-127.0.0.1}:"), f"{name} publishes {port} on every interface"
    assert not services["postgres"].get("ports"), "PostgreSQL stays on the compose network"
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"prefect-server", "s3", "webhook", "serve"}, published
    weed = services["s3"]["command"]
    assert "-webdav=false" in weed and "-admin.ui=false" in weed
    assert "s3-security:/etc/seaweedfs:ro" in services["s3"]["volumes"]
    starts_after_preflight = {"postgres", "s3-security"}
    for name in starts_after_preflight:
        assert services[name]["depends_on"]["preflight"] == {"condition": "service_completed_successfully"}


def _preflight(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The preflight job's script as compose hands it to sh (``$$`` is compose's escape for ``$``)."""
    script = _compose()["services"]["preflight"]["command"][-1].replace("$$", "$")
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_compose_refuses_the_example_secrets() -> None:
    example = dict(
        line.split("=", 1)
        for line in (REPO / "infra" / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    refused = _preflight(example)
    assert refused.returncode == 1
    for var in ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "DRYWALL_WEBHOOK_SECRET", "PREFECT_AUTH_STRING"):
        assert f"preflight: {var} is the example value" in refused.stderr, refused.stderr
    good = {
        "POSTGRES_PASSWORD": "a-real-postgres-secret-123",
        "AWS_SECRET_ACCESS_KEY": "a-real-s3-secret-key-456",
        "DRYWALL_WEBHOOK_SECRET": "a-real-webhook-secret-789",
        "PREFECT_AUTH_STRING": "admin:a-real-prefect-password",
    }
    assert _preflight(good).returncode == 0, _preflight(good).stderr
    short = _preflight({**good, "POSTGRES_PASSWORD": "short"})
    assert short.returncode == 1 and "POSTGRES_PASSWORD is shorter than 16" in short.stderr
    no_user = _preflight({**good, "PREFECT_AUTH_STRING": "no-colon-in-this-string"})
    assert no_user.returncode == 1 and "user:password" in no_user.stderr


K8S_VERSION = "1.31"


def _rendered_gpu_job(values: dict) -> dict:
    """The Job manifest a Kubernetes worker submits for a flow run, built by prefect-kubernetes itself."""
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly-train"))
    return config, config.job_manifest


def test_gpu_job_template_is_a_valid_job_that_cannot_hang(prefect_api) -> None:
    """Validated offline against the Kubernetes schemas: a GPU request, a deadline, a pending timeout."""
    import kubernetes_validate

    config, job = _rendered_gpu_job({"image": "registry.example/drywall-qa:gpu"})
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert 0 < job["spec"]["activeDeadlineSeconds"] <= 24 * 3600, "a hung training pod is killed"
    assert 0 < config.pod_watch_timeout_seconds <= 3600, "a pod that never schedules fails the run"
    assert config.job_watch_timeout_seconds > job["spec"]["activeDeadlineSeconds"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) >= 30, "heartbeats for the zombie-run automation"

    # a mistake in the template is caught (this one was in it: Job fields inside the pod spec)
    broken = json.loads(json.dumps(job))
    broken["spec"]["template"]["spec"]["completions"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_worker_values_are_valid_kubernetes() -> None:
    """The Helm values' container settings, placed in the Deployment the chart renders, validate."""
    import kubernetes_validate

    worker = yaml.safe_load((REPO / "infra" / "k8s" / "prefect-worker-values.yaml").read_text())["worker"]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "prefect-worker"},
        "spec": {
            "selector": {"matchLabels": {"app": "prefect-worker"}},
            "template": {
                "metadata": {"labels": {"app": "prefect-worker"}},
                "spec": {
                    "containers": [
                        {
                            "name": "prefect-worker",
                            "image": f"{worker['image']['repository']}:{worker['image']['prefectTag']}",
                            "resources": worker["resources"],
                            "env": worker.get("extraEnvVars", []),
                            "envFrom": [{"secretRef": {"name": worker["extraEnvVarsSecret"]}}],
                        }
                    ]
                },
            },
        },
    }
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    env = {e["name"]: e["value"] for e in worker.get("extraEnvVars", [])}
    assert env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") == "30"


def test_serve_manifests_are_valid_kubernetes_with_probes_and_autoscaling() -> None:
    """The prediction service's Deployment, Service and HPA validate offline (strict), probe the
    service's own routes, and the HPA scales the Deployment the Service selects."""
    import kubernetes_validate

    docs = list(yaml.safe_load_all((REPO / "infra" / "k8s" / "serve.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    pod = kinds["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["command"][:2] == ["drywall", "serve"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DRYWALL_SERVE__API_KEYS_FILE"].startswith("/etc/drywall/"), "keys come from a Secret"
    assert kinds["Service"]["spec"]["selector"] == pod["metadata"]["labels"]
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", kinds["Deployment"]["metadata"]["name"])
    assert kinds["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    serve = _compose()["services"]["serve"]
    assert serve["command"].startswith("drywall serve") and serve["secrets"] == ["drywall-api-keys"]
    assert serve["environment"]["DRYWALL_SERVE__API_KEYS_FILE"] == "/run/secrets/drywall-api-keys"
