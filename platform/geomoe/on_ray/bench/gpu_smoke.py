"""``make gpu-smoke``: every GPU path through Ray on one GPU machine, one line per part.

1. the PE-MoE quickstart with ``resources.use_gpu=true``: Train workers on the GPU (NCCL), embedding actors and
   the evaluation/mining task on the GPU, the index;
2. the SMGeo quickstart with ``resources.use_gpu=true``;
3. ``serve/quickstart.yaml`` with the query encoder, the gallery search and the localizer on the GPU (a quarter
   GPU each), answering /search (with re-ranking) and /localize over HTTP;
4. ``geomoe bench gpu`` (= ``make gpu-check``): the real-size numbers.

Run from the repository root; it works in a temporary copy of jobs/ and serve/ and writes its logs and results
to ``$OUT`` (default ``bench_results/gpu_smoke``). Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

# num_cpus: the jobs' local clusters get the GPU machine's cores
GPU = ["--set", "resources.use_gpu=true", "--set", "resources.num_cpus=8"]
# PE-MoE: the model alone (its baselines run the same code), every image set embedded by GPU actors (the quickstart
# embeds small sets in the driver)
PE_MOE = ["--set", "baselines={}", "--set", "resources.concurrent_models=false", "--set",
          "resources.embed_in_driver_max=0"]  # fmt: skip
GPU_DEPLOYMENTS = {"QueryEncoder", "GallerySearch", "Localizer"}


def _run(name: str, command: list[str], cwd: Path, out: Path, timeout_s: float) -> bool:
    """Run one part, its output to ``out/<name>.log``; print its line."""
    start = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    tail = (out / f"{name}.log").read_text().strip().splitlines()[-1:] or [""]
    verdict = "ok" if rc == 0 else ("TIMED OUT" if rc == -1 else f"FAILED rc={rc}")
    print(f"{name}: {verdict} in {time.monotonic() - start:.0f} s | {tail[0][:160]}", flush=True)
    return rc == 0


def _serve_config(work: Path) -> Path:
    """serve/quickstart.yaml with the localizer from the SMGeo run and the models' deployments on the GPU."""
    config = yaml.safe_load((work / "serve" / "quickstart.yaml").read_text())
    results = json.loads((work / "runs" / "smgeo_quickstart" / "results.json").read_text())
    app = config["applications"][0]
    app["args"]["localizer"] = results["train"]["model"]["checkpoint"]
    app["deployments"].append({"name": "Localizer", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}})
    for deployment in app["deployments"]:
        if deployment["name"] in GPU_DEPLOYMENTS:
            deployment["ray_actor_options"]["num_gpus"] = 0.25
    path = work / "serve" / "gpu_smoke.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _png(size: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 90, 60)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _serve(work: Path, out: Path, timeout_s: float = 300) -> bool:
    """Serve the quickstart app with GPU replicas, ask /search (re-ranked) and /localize, shut it down."""
    start = time.monotonic()
    config = _serve_config(work)
    with open(out / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "geomoe.cli", "serve", str(config)], cwd=work, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            line = _ask_when_ready(server, start + timeout_s)
        finally:
            _stop(server)
    print(f"serve on GPU: {line} in {time.monotonic() - start:.0f} s", flush=True)
    return line.startswith("ok")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Ctrl-C to `serve run` (it shuts the application and its local cluster down), then its whole session."""
    with contextlib.suppress(ProcessLookupError):
        server.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _ask_when_ready(server: subprocess.Popen[bytes], deadline: float) -> str:
    error = "not ready"
    while time.monotonic() < deadline and server.poll() is None:
        try:
            query = {"query": "a drone view of a red roof", "k": 5, "rerank": True}
            found = _post("http://127.0.0.1:8000/search", query)
            box = _post("http://127.0.0.1:8000/localize",
                        {"drone_image": _png(64), "click": [32.0, 32.0], "satellite_tile": _png(128)})  # fmt: skip
            return f"ok | /search top {found['results'][0]['image_id']} | /localize box {box['box']}"
        except OSError as err:  # not up yet (connection refused, 404/503 while deploying)
            error = str(err)
            time.sleep(5)
        except (ValueError, KeyError, IndexError) as err:  # up, but an answer that is not what the API promises
            return f"FAILED (unexpected answer: {err!r})"
    return f"FAILED ({'server exited' if server.poll() is not None else 'timed out'}: {error})"


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-smoke: no GPU on this machine; nothing run")
        return 0
    out = Path(os.environ.get("OUT") or "bench_results/gpu_smoke").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="geomoe-gpu-smoke-"))
    for folder in ("jobs", "serve"):
        shutil.copytree(folder, work / folder)
    geomoe = [sys.executable, "-m", "geomoe.cli"]
    pe_moe = _run("pe_moe quickstart on GPU", [*geomoe, "run", "jobs/quickstart.yaml", *GPU, *PE_MOE], work, out, 900)
    smgeo = _run("smgeo quickstart on GPU", [*geomoe, "run", "jobs/smgeo_quickstart.yaml", *GPU], work, out, 600)
    if pe_moe and smgeo:
        served = _serve(work, out)
    else:
        served = False
        print("serve on GPU: skipped (it serves what the two jobs trained)", flush=True)
    check = _run("gpu-check", [*geomoe, "bench", "gpu", "--out", str(out / "gpu_check")], work, out, 600)
    passed = pe_moe and smgeo and served and check
    print(f"gpu-smoke: {'ok' if passed else 'FAILED'}; logs in {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
