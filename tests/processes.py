"""Start the real parts for integration tests: redis-server and Celery worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

PROJECT_DIR = Path(__file__).resolve().parent.parent


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def running_redis(redis_url: str, workdir: Path):
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("redis-server is not installed; `make test` installs it")
    port = urlparse(redis_url).port
    process = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis.from_url(redis_url)

        def answers() -> bool:
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_for(answers, 10, "redis-server to answer")
        yield process
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def running_celery_worker(queues: str, env: dict[str, str], log_path: Path, pool: str = "solo"):
    """A real worker process with the given environment; its log is kept for failures.
    `prefork` runs tasks in a child process, which a test can kill like a crash."""
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "prefloop", "worker", "-Q", queues, "-c", "1", "--pool", pool,
         "-n", f"test-{os.getpid()}-{queues.replace(',', '-')}@%h", "--loglevel", "INFO", "--without-gossip",
         "--without-mingle"],
        cwd=PROJECT_DIR, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "ready." in log_path.read_text() or process.poll() is not None, 60, "the Celery worker")
        if process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited:\n{log_path.read_text()[-3000:]}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
