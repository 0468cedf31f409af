"""Reward-model server benchmark (issue 31 item 1): throughput and latency of
training/ml/reward_server.py on this machine, for requests sent one at a time and for
concurrent clients whose requests the server micro-batches.

Two reward models, each served by a subprocess of this script (so the clients' threads
do not share its interpreter): the SmolLM2-135M-Instruct backbone, where a forward pass
is compute-bound on a CPU, and the tests' tiny Llama, where the fixed cost of a pass
(and of a request) dominates, as it does for a small batch on a GPU. Each has a seeded
random score head (speed does not depend on what it learned). The same inputs in every
mode: one answer per request, ~90 tokens with its templated prompt; each mode runs for
the same time after a warm-up. The server checks a fixed key instead of looking the
token up in the database (one indexed query per request in `manage.py serve_reward_model`).
Results replace the "Reward-model server" section of docs/benchmarks.md with --write.

    .venv/bin/python scripts/bench_reward_server.py --seconds 20 --write
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_MODEL_DIR = ROOT / "var" / "models" / "smollm2-135m-instruct"
SECTION = "## Reward-model server (issue 31 item 1)"
KEY = "plk_bench-key"
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

TOPICS = ["rivers", "bread", "the moon", "bicycles", "tea", "winter", "libraries", "foxes", "trains", "honey"]


def items(n: int) -> list[dict]:
    """n distinct (prompt, answer) items of realistic length."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = [{"role": "user", "content": f"Tell me something interesting about {topic} (question {i})."}]
        answer = (f"Here is something about {topic}: people have written about {topic} for centuries, and "
                  f"there is always more to learn. Fact number {i}: {topic} can surprise you if you look closely, "
                  "so take a moment today to notice them.")
        out.append({"prompt": prompt, "answer": answer, "ended": True})
    return out


def serve(model_dir: Path, port: int, max_batch: int, wait_ms: float, torch_threads: int, device: str) -> None:
    """The server process: a reward model on `model_dir`'s backbone behind a fixed key, until killed."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from training.ml.reward_loading import load_reward_tokenizer
    from training.ml.reward_scoring import RewardScorer
    from training.ml.reward_server import (
        Authorizer,
        LoadedVersion,
        Refusal,
        RewardServer,
        RewardServerConfig,
        ServedVersion,
    )

    class FixedKey(Authorizer):
        def check(self, key):
            if key != KEY:
                raise Refusal(401, "bad key")

    def load(version: ServedVersion) -> LoadedVersion:
        tokenizer = load_reward_tokenizer(model_dir)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).to(device).eval()
        model.config.pad_token_id = tokenizer.pad_token_id
        return LoadedVersion(version, RewardScorer(model, tokenizer, 0.0, 1.0, None))

    if torch_threads:
        torch.set_num_threads(torch_threads)
    version = ServedVersion(1, "bench", str(model_dir), str(model_dir), 0.0, 1.0)
    config = RewardServerConfig(port=port, max_batch=max_batch, batch_wait_ms=wait_ms)
    server = RewardServer(config, version, FixedKey(), load=load).start()
    print(f"ready {server.url} {torch.get_num_threads()}", flush=True)
    threading.Event().wait()


def post(url: str, item: dict) -> float:
    request = urllib.request.Request(url + "/v1/rewards", data=json.dumps({"items": [item]}).encode(),
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        json.loads(response.read())
    return time.perf_counter() - started


def measure(url: str, work: list[dict], clients: int, seconds: float) -> dict:
    """Each client sends one-answer requests back to back for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        n = index
        while time.perf_counter() < deadline:
            try:
                latencies[index].append(post(url, work[n % len(work)]))
            except BaseException as error:  # noqa: BLE001 - counted, reported
                errors.append(error)
            n += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = sorted(x for mine in latencies for x in mine)
    return {"clients": clients, "requests": len(flat), "seconds": elapsed, "per_s": len(flat) / elapsed,
            "p50_ms": 1000 * flat[len(flat) // 2], "p99_ms": 1000 * flat[min(len(flat) - 1, int(len(flat) * 0.99))],
            "errors": len(errors), "error_kinds": sorted({f"{type(e).__name__}: {e}" for e in errors})[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per mode, after the warm-up")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the batched mode")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="the server's torch threads (0: torch's default). 1 here: this machine's two cores "
                             "are shared, and two threads contending with other processes ran ~20x slower")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    parser.add_argument("--serve", nargs=2, default=None, help=argparse.SUPPRESS)  # the server process: DIR PORT
    args = parser.parse_args()
    if args.serve is not None:
        return serve(Path(args.serve[0]), int(args.serve[1]), args.max_batch, args.batch_wait_ms, args.torch_threads,
                     args.device)

    from benchmark_report import command_line, machine_lines, replace_section

    tiny_dir = Path(tempfile.mkdtemp(prefix="bench-reward-server-")) / "tiny"
    build_tiny(tiny_dir)
    results = {name: measure_model(model_dir, args) for name, model_dir in
               [("SmolLM2-135M", BASE_MODEL_DIR), ("tiny (2 layers, hidden 32)", tiny_dir)]}

    rows = []
    for name, (one, batched, _) in results.items():
        for mode, m in (("one at a time", one), (f"{args.clients} concurrent clients, micro-batched", batched)):
            rows.append(f"| {name} | {mode} | {m['requests']} | {m['per_s']:.1f} | {m['p50_ms']:.0f} | "
                        f"{m['p99_ms']:.0f} | {m['errors']} |")
    ratios = "; ".join(f"{name}: throughput **{b['per_s'] / o['per_s']:.2f}×**, p99 {b['p99_ms'] / o['p99_ms']:.2f}×"
                       for name, (o, b, _) in results.items())
    threads = next(iter(results.values()))[2]
    section = "\n".join([
        SECTION, "",
        f"Command: `{command_line()}`", "",
        *machine_lines(),
        f"- Server: training/ml/reward_server.py in its own process, fp32 on {args.device}, {threads} torch "
        f"thread(s), max_batch {args.max_batch}, batch wait {args.batch_wait_ms:g} ms. Reward models: the "
        "SmolLM2-135M-Instruct backbone, and the tests' tiny random Llama, each with a seeded random score head "
        f"(speed does not depend on what the head learned). One answer (~90 tokens with its templated prompt) "
        f"per request, {args.seconds:g} s per mode after a 3 s warm-up.", "",
        "| reward model | mode | requests | answers/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---|---|---|---|---|---|",
        *rows, "",
        f"Batched over one at a time: {ratios}.", "",
        "Where a forward pass is compute-bound (the 135M model on a CPU thread: about the same time per answer "
        "whatever the batch), batching adds little throughput, and concurrent clients mostly wait in the queue "
        "(their p99 is the queue). Where the fixed cost of a pass and of a request dominates (the tiny model here; "
        "small batches of a larger model on a GPU), micro-batching multiplies throughput at a small latency cost. "
        "The machine's two cores were shared with other jobs while this ran.",
    ])
    print(section)
    for name, (one, batched, _) in results.items():
        for m in (one, batched):
            if m["errors"]:
                print(f"{name}, {m['clients']} clients: {m['errors']} errors, e.g. {m['error_kinds']}")
    if args.write:
        replace_section(SECTION, section)


def build_tiny(out: Path) -> None:
    from training.ml.base_model import load_gguf_tokenizer, smollm2_gguf_path
    from training.ml.tiny_model import build_tiny_model

    build_tiny_model(out, load_gguf_tokenizer(smollm2_gguf_path()))


def measure_model(model_dir: Path, args) -> tuple[dict, dict, str]:
    """(one at a time, batched, torch threads) with a server on `model_dir`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(model_dir), str(port),
                               "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
                               "--torch-threads", str(args.torch_threads), "--device", args.device],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        ready = server.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise SystemExit(f"the server did not start: {ready!r}")
        url, threads = ready.split()[1], ready.split()[2]
        work = items(200)
        measure(url, work, args.clients, 3)  # warm-up: first forward passes, connections
        return measure(url, work, 1, args.seconds), measure(url, work, args.clients, args.seconds), threads
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
