"""Helpers of the prediction-service tests: model versions that answer differently, published with
their warm-up sets, and the service run for real -- in a uvicorn thread or as ``drywall serve``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import torch

from deployments.s3server import free_port_pair

DRYWALL = str(Path(sys.executable).parent / "drywall")


def decoder_artifact(tiny_model_dir: Path, out: Path, bias: float | None = None) -> Path:
    """A decoder artifact of the tiny model; ``bias`` set: its last layer answers that logit everywhere
    (+8: every pixel foreground, -8: none), so two versions' masks differ for sure."""
    from drywall_core.model.load import load_model, save_decoder

    loaded = load_model(tiny_model_dir)
    if bias is not None:
        convs = [m for m in loaded.model.decoder.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
        with torch.no_grad():
            convs[-1].weight.zero_()
            convs[-1].bias.fill_(bias)
    save_decoder(loaded, out)
    return out


def publish_version(
    reg, artifact: Path, photos: Sequence[Path], prompts: Sequence[str], work: Path, version: str,
    warmup_from: Path | None = None,
) -> str:  # fmt: skip
    """Publish ``artifact`` with a warm-up set recorded by ``warmup_from`` (default: itself, as the
    gate does); another model's set makes a version whose warm-up fails where it would serve."""
    from drywall_core.model.runtime import load_for_inference
    from drywall_core.release.warmup import record_warmup

    files = record_warmup(load_for_inference(warmup_from or artifact), photos, prompts, work / f"warmup-{version}")
    return reg.publish(artifact, version=version, extra_files=files)["version"]


class ThreadServer:
    """A FastAPI app on a real uvicorn server on a free loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port_pair()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ServeProcess:
    """``drywall serve`` as its own process (its own DRYWALL_HOME: a host of its own)."""

    def __init__(self, env: dict[str, str], log: Path, args: Sequence[str] = ()) -> None:
        self.port = free_port_pair()
        self.log = log
        self.env = {**os.environ, **env}
        self.args = list(args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServeProcess:
        out = open(self.log, "wb")  # noqa: SIM115 - the process writes it until stopped
        self.proc = subprocess.Popen(
            [DRYWALL, "serve", "--port", str(self.port), *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"not ready after {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_for(check, timeout: float, what: str, step: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
