"""``drywall predict --server URL``: the same mask files as local prediction, made by a service.

Photos are sent a few at a time (the service batches concurrent requests), each with
``Accept: image/png`` so the mask comes back as the file to write. A photo the service refuses
(4xx) is reported and skipped like an unreadable photo in local prediction; a service that cannot
be reached or answers 5xx fails the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from drywall_core.base.errors import CheckFailed
from drywall_core.base.fsutil import atomic_open
from drywall_core.model.predict import PredictReport, plan_outputs

PARALLEL = 4


def predict_remote(
    server: str, paths: Sequence[Path], prompt: str, out: Path, api_key: str | None, timeout_s: float = 120.0
) -> PredictReport:
    import httpx

    pairs = plan_outputs(paths, prompt, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    headers = {"Accept": "image/png", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    report = PredictReport()
    url = server.rstrip("/") + "/v1/segment"

    with httpx.Client(headers=headers, timeout=timeout_s) as client:

        def one(pair: tuple[Path, Path]) -> tuple[Path, Path, httpx.Response | str]:
            src, dst = pair
            try:
                data = src.read_bytes()
            except OSError as exc:
                return src, dst, f"{exc.strerror or exc}"
            try:
                return src, dst, client.post(url, files={"image": (src.name, data)}, data={"prompt": prompt})
            except httpx.HTTPError as exc:
                raise CheckFailed(f"prediction service {server}: {type(exc).__name__}: {exc}") from None

        with ThreadPoolExecutor(PARALLEL) as pool:
            for src, dst, got in pool.map(one, pairs):
                if isinstance(got, str):
                    report.failed.append((src, got))
                elif got.status_code == 200:
                    with atomic_open(dst, "wb") as f:
                        f.write(got.content)
                    report.written.append(dst)
                elif got.status_code in (401, 429) or got.status_code >= 500:
                    raise CheckFailed(f"prediction service {server}: {got.status_code} {_error(got)}")
                else:
                    report.failed.append((src, f"{got.status_code} {_error(got)}"))
    return report


def _error(response) -> str:
    try:
        return str(response.json().get("error", response.text[:200]))
    except ValueError:
        return response.text[:200]
