"""Labeling throughput benchmark (`make bench`).

Seeds a fresh SQLite database under var/bench/, starts gunicorn as in production and lets N
simulated annotators loop over POST /label/api/next and POST /label/api/submit for a fixed
time. Reports labels/s, requests/s and latency percentiles, then checks the database: every
acknowledged label is stored exactly once and no comparison was labeled by two annotators.
The results replace the "Labeling throughput" section of docs/benchmarks.md; the exit status
is 1 when the integrity check fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
DB_PATH = ROOT / "var" / "bench" / "bench.sqlite3"
SERVER_LOG = DB_PATH.with_name("server.log")
SECTION = "## Labeling throughput (issue 2)"
SECTION_WITH_THINK_TIME = "## Labeling with think time (issue 13 item 4)"
WORKERS, THREADS = 2, 4  # as scripts/demo.sh runs it
KEEP_ALIVE_SECONDS = 2  # gunicorn's default --keep-alive
CHOICES = ("a", "b", "tie", "both_bad")
RESEND_SHARE = 0.02  # submits sent twice, as a double click or a retried request would
ANSWER = "**Answer {n}** to prompt {i}.\n\n- One point.\n- Another, with `code`.\n\nThat is all there is to say."

# Set before Django is imported, so this process and the server share the bench database.
# No broker runs here: the reward-model trigger is off (scripts/bench_reward_model.py
# measures training), so every request is the labeling path alone.
os.environ.update(DATABASE_URL=f"sqlite:///{DB_PATH}", HF_HUB_OFFLINE="1", DJANGO_SETTINGS_MODULE="prefloop.settings",
                  PREFLOOP_RM_AUTO_TRAIN_LABELS="0")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_report import command_line, machine_lines, replace_section  # noqa: E402


def prepare_database(annotators: int, comparisons: int) -> list[tuple[int, str]]:
    """Migrate a fresh database, seed it and return (user id, session key) per annotator."""
    DB_PATH.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DB_PATH}{suffix}").unlink(missing_ok=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)

    import django

    django.setup()
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from labeling.models import Comparison, ComparisonItem, Completion, Prompt, conversation_hash
    from training.services import create_run

    with transaction.atomic():
        users = [get_user_model().objects.create_user(f"bench-annotator-{i}") for i in range(annotators)]
        run = create_run("bench", "unused")  # the queue never opens the model
        policy = run.base_version
        chats = [[{"role": "user", "content": f"Bench prompt {i}: explain it briefly."}] for i in range(comparisons)]
        # bulk_create skips Prompt.save(), which is what normally sets the hash.
        prompts = Prompt.objects.bulk_create(Prompt(messages=m, content_hash=conversation_hash(m)) for m in chats)
        answers = Completion.objects.bulk_create(
            Completion(prompt=p, policy_version=policy, text=ANSWER.format(n=n, i=p.pk))
            for p in prompts for n in (1, 2)
        )
        queue = Comparison.objects.bulk_create(Comparison(prompt=p, run=run, labels_needed=1) for p in prompts)
        ComparisonItem.objects.bulk_create(
            ComparisonItem(comparison=c, completion=answers[2 * k + pos], position=pos)
            for k, c in enumerate(queue) for pos in (0, 1)
        )
    # A logged-in session per annotator, holding what django.contrib.auth.login() would store.
    sessions = []
    for user in users:
        store = import_module(settings.SESSION_ENGINE).SessionStore()
        store["_auth_user_id"] = str(user.pk)
        store["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        store["_auth_user_hash"] = user.get_session_auth_hash()
        store.create()
        sessions.append((user.pk, store.session_key))
    return sessions


@contextmanager
def gunicorn(port: int):
    """The production server on `port`, answering; stopped with SIGTERM however the block ends."""
    # No control socket: its default path is shared by every gunicorn of this user (a running demo's).
    command = [ROOT / ".venv/bin/gunicorn", "prefloop.wsgi", "--bind", f"127.0.0.1:{port}", "--workers",
               str(WORKERS), "--threads", str(THREADS), "--no-control-socket"]
    with open(SERVER_LOG, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(300):
                if server.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {server.returncode}; see {SERVER_LOG}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            else:
                raise RuntimeError(f"gunicorn did not answer on port {port}; see {SERVER_LOG}")
            yield
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


class Stats:
    """Shared by the annotator threads: list.append is atomic, the counter takes the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency_ms: dict[str, list[float]] = {"next": [], "submit": []}
        self.acks: list[tuple[int, int, int]] = []  # (annotator id, comparison id, label id)
        self.counts: Counter[str] = Counter()  # errors, resends, empty queues
        self.problems: list[str] = []  # answers that break the API's promises

    def tally(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def errors(self) -> dict[str, int]:
        return {k.removeprefix("error: "): v for k, v in self.counts.items() if k.startswith("error: ")}


class Annotator(threading.Thread):
    """One simulated person on one keep-alive connection: take the next comparison, judge it at once."""

    def __init__(self, user_id: int, session_key: str, port: int, stats: Stats, deadline: float,
                 think: tuple[float, float]) -> None:
        super().__init__(daemon=True)
        self.user_id, self.stats, self.deadline, self.think = user_id, stats, deadline, think
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
        # Django accepts an unmasked 32-character secret as the header token.
        csrf = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        self.headers = {"Cookie": f"sessionid={session_key}; csrftoken={csrf}", "X-CSRFToken": csrf}
        self.rng = random.Random(user_id)

    def call(self, endpoint: str, path: str, body: bytes | None = None) -> dict | None:
        headers = self.headers | ({"Content-Type": "application/json"} if body else {})
        for _ in range(2):  # one retry after a dropped connection: both endpoints are safe to repeat
            start = time.perf_counter()
            try:
                self.conn.request("POST" if body else "GET", path, body=body, headers=headers)
                reply = self.conn.getresponse()
                data = reply.read()
            except (OSError, http.client.HTTPException) as error:
                self.conn.close()  # http.client reconnects on the next request
                self.stats.tally(f"error: {endpoint} {type(error).__name__}")
                continue
            self.stats.latency_ms[endpoint].append((time.perf_counter() - start) * 1000)
            if reply.status == 200:
                return json.loads(data)
            self.stats.tally(f"error: {endpoint} HTTP {reply.status}")
            return None
        return None

    def run(self) -> None:
        if self.think[1] > 0:  # people arrive over the first pause, not all in the same millisecond
            time.sleep(self.rng.uniform(0, self.think[1]))
        while time.monotonic() < self.deadline:
            state = self.call("next", "/label/api/next", b"{}")  # a POST: it takes a lease
            if state is None or state["comparison"] is None:  # an error (counted in call) or an empty queue
                if state is not None:
                    self.stats.tally("empty queue")
                time.sleep(0.05)
                continue
            comparison_id = state["comparison"]["id"]
            if self.think[1] > 0:  # reading and judging, as a person would
                pause = self.rng.uniform(*self.think)
                time.sleep(pause)
                if pause >= KEEP_ALIVE_SECONDS:  # gunicorn closed the idle connection; a browser opens a new one
                    self.conn.close()
            label = {"comparison_id": comparison_id, "choice": self.rng.choice(CHOICES), "active_seconds": 1.0}
            body = json.dumps(label).encode()
            ack = self.call("submit", "/label/api/submit", body)
            if ack is None:
                continue
            if ack["duplicate"]:
                self.stats.problems.append(f"first submit of comparison {comparison_id} answered duplicate=true")
            self.stats.acks.append((self.user_id, comparison_id, ack["label_id"]))
            if self.rng.random() < RESEND_SHARE:
                again = self.call("submit", "/label/api/submit", body)
                self.stats.tally("resent")
                if again == {"label_id": ack["label_id"], "duplicate": True}:
                    self.stats.tally("resent ok")
                else:
                    self.stats.problems.append(f"resubmit of comparison {comparison_id} answered {again}")


def check_integrity(stats: Stats) -> tuple[dict[str, int], bool]:
    """Compare what the server acknowledged with what the database holds."""
    from django.db.models import Count, F, Q

    from labeling.models import Comparison, Label

    stored = {pk: (user, comp) for pk, user, comp in Label.objects.values_list("id", "annotator_id", "comparison_id")}
    acked = {label_id: (user, comp) for user, comp, label_id in stats.acks}
    faults = {  # each of these should be 0
        "acknowledged ids missing from the database": len(acked.keys() - stored.keys()),
        "acknowledged ids stored for another annotator or comparison": sum(
            1 for pk, owner in acked.items() if pk in stored and stored[pk] != owner
        ),
        "(comparison, annotator) pairs stored twice": Label.objects.values("comparison", "annotator")
        .annotate(n=Count("id")).filter(n__gt=1).count(),
        "comparisons labeled by two or more annotators": Label.objects.values("comparison")
        .annotate(n=Count("annotator", distinct=True)).filter(n__gt=1).count(),
        "comparisons whose label_count disagrees with their labels": Comparison.objects.annotate(
            n=Count("labels", filter=~Q(labels__choice=Label.Choice.SKIP))
        ).exclude(label_count=F("n")).count(),
    }
    checks = {"label rows": len(stored), "distinct acknowledged label ids": len(acked), **faults}
    return checks, len(stored) == len(acked) and not any(faults.values()) and not stats.problems


def write_report(args: argparse.Namespace, stats: Stats, elapsed: float, checks: dict[str, int], ok: bool) -> str:
    """The results section as markdown, also written into docs/benchmarks.md."""

    labels = len({label_id for _, _, label_id in stats.acks})
    answered = sum(len(v) for v in stats.latency_ms.values())
    errors, counts = stats.errors(), stats.counts
    log = SERVER_LOG.read_text(errors="replace")  # Django logs a 500's traceback there
    rows = [
        ("Labels/s (acknowledged, not duplicates)", f"{labels / elapsed:.1f}"),
        ("Requests/s (both endpoints)", f"{answered / elapsed:.1f}"),
        ("Labels acknowledged / requests answered", f"{labels} / {answered}"),
    ]
    for endpoint, values in stats.latency_ms.items():
        ordered = sorted(values) or [float("nan")]
        cuts = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99, 1.0)]
        rows.append((f"`{endpoint}` latency p50 / p99 / max (ms)", " / ".join(f"{c:.0f}" for c in cuts)))
    rows += [
        ("Errors (non-200 or dropped connection)", f"{sum(errors.values())} {json.dumps(errors) if errors else ''}"),
        ("Resubmits answered duplicate=true with the same label id", f"{counts['resent ok']} / {counts['resent']}"),
        ("`next` answers with an empty queue", str(counts["empty queue"])),
        ('Server log: "database is locked" / tracebacks', f"{log.count('is locked')} / {log.count('Traceback')}"),
    ]
    section = SECTION_WITH_THINK_TIME if args.think[1] > 0 else SECTION
    make_bench = "--annotators 64 --seconds 60 --think 2 4" if args.think[1] > 0 else "--annotators 32 --seconds 60"
    lines = [
        section, "",
        f"Command: `{command_line()}` (`make bench` runs it with `{make_bench}`).", "",
        *machine_lines(),
        f"- Settings: {args.annotators} annotators for {args.seconds:g} s ({elapsed:.1f} s measured), "
        f"{args.comparisons} comparisons with labels_needed=1, "
        f"think time {args.think[0]:g}–{args.think[1]:g} s per comparison, "
        f"gunicorn --workers {WORKERS} --threads {THREADS}, "
        "fresh SQLite database (WAL, BEGIN IMMEDIATE) at var/bench/bench.sqlite3",
        "",
        "| Metric | Value |", "| --- | --- |", *(f"| {name} | {value.strip()} |" for name, value in rows), "",
        f"Integrity check {'passed' if ok else 'FAILED'}:", "",
        *(f"- {name}: {value}" for name, value in checks.items()),
        *(f"- problem: {p}" for p in stats.problems[:10]),
    ]
    text = "\n".join(lines)
    replace_section(section, text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--comparisons", type=int, default=20000, help="more than the run can label")
    parser.add_argument("--think", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"),
                        help="seconds each simulated person looks at a comparison before answering "
                             "(uniform between MIN and MAX; 0 0 is saturation)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one")
    args = parser.parse_args()

    sessions = prepare_database(args.annotators, args.comparisons)
    from django.db import connections

    connections.close_all()  # the server has the database to itself while it runs
    port = args.port
    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

    stats = Stats()
    with gunicorn(port):
        start = time.monotonic()
        threads = [Annotator(uid, key, port, stats, start + args.seconds, args.think) for uid, key in sessions]
        for thread in threads:
            thread.start()
        with tqdm(total=round(args.seconds), unit="s", desc="labeling") as bar:
            while alive := [t for t in threads if t.is_alive()]:
                alive[0].join(timeout=1)  # returns early when the last one ends, so `elapsed` is exact
                bar.update(min(round(time.monotonic() - start), bar.total) - bar.n)
                bar.set_postfix(labels=len(stats.acks), errors=sum(stats.errors().values()))
        elapsed = time.monotonic() - start

    checks, ok = check_integrity(stats)
    print(write_report(args, stats, elapsed, checks, ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
