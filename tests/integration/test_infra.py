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
    for var in ("POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "DRYWALL_WEBHOOK_SECRET"):
        assert f"{var}=" in example
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
