"""A published reward model served over HTTP to trainers outside PrefLoop (OpenRLHF,
verl, a TRL script), in a process of its own: `manage.py serve_reward_model` resolves
the run, the version and the token rule (training/services/reward_server.py) and hands
them to `RewardServer`. No Django here.

- One model, loaded once, scores every request. Requests wait in a queue; one scoring
  thread takes the oldest, waits up to `batch_wait_ms` for others to join (up to
  `max_batch` answers), and scores them in one forward pass per length-sorted batch.
  A request is never split, so all its answers are scored by one version.
- Following `latest`, a watcher thread asks every `poll_seconds` which version is the
  run's newest, loads a new one beside the old, and swaps the reference between two
  batches: a request in flight finishes on the version it started with, none fails.
- Inputs are built as the app builds them (training/ml/standalone_scoring.py) and
  rewards are normalized with the version's mean and std, as the app scores.

Endpoints (JSON, every one but /health behind `authorize`, a PrefLoop API token):

    POST /v1/rewards  {"items": [{"prompt": [messages], "answer": "...", "ended": true}]}
                      -> {"rewards": [...], "reward_model": {...}}
    POST /get_reward  OpenRLHF's remote reward model: {"query": [texts], "prompts": [texts]}
                      -> {"rewards": [...], "scores": [...], "reward_model": {...}}
    GET  /v1/reward-model -> the version being served
    GET  /health          -> {"status": "ok"}
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.ml.standalone_scoring import reward_input_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardServerConfig:
    """How a reward-model server listens, batches and bounds requests."""

    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only)."""
    port: int = 8100
    """Port to listen on (0: any free one)."""
    max_batch: int = 32
    """Answers one forward pass scores at most; requests are batched up to this."""
    batch_wait_ms: float = 5.0
    """How long the oldest waiting request waits for others to join its batch."""
    max_items: int = 256
    """Answers per request at most (413 above)."""
    max_chars: int = 32_000
    """Characters per answer at most, its prompt included (413 above)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Request body size at most (413 above)."""
    poll_seconds: float = 5.0
    """How often a server following `latest` asks for the run's newest version."""
    request_timeout_s: float = 300.0
    """A request waiting longer than this for its scores is answered 503."""


@dataclass(frozen=True)
class ServedVersion:
    """A reward model version as the server loads and names it."""

    number: int
    run: str
    base_model_dir: str
    weights_dir: str
    mean: float
    std: float
    about: dict = field(default_factory=dict)
    """What else answers say about it (label count, held-out accuracy, created at)."""

    def describe(self) -> dict:
        return {"version": self.number, "run": self.run, "reward_mean": self.mean, "reward_std": self.std,
                **self.about}


class Refusal(Exception):
    """A request answered with an HTTP error: `status` and a message for the caller."""

    def __init__(self, status: int, message: str, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class Authorizer:
    """Who may call: `check(key)` raises Refusal (401, 403) for a key that may not.
    `release()` runs when a connection's thread ends (the app's closes its database
    connection there)."""

    def check(self, key: str | None) -> None:
        raise NotImplementedError

    def release(self) -> None:
        pass


# Work items: what one answer of a request is, and how its input ids are built. Built in
# the scoring thread, with the tokenizer of the version that scores it.


@dataclass(frozen=True)
class ChatAnswer:
    """An answer to chat messages: built exactly as the app builds reward inputs."""

    prompt: list[dict]
    answer: str
    ended: bool = True

    def input_ids(self, tokenizer) -> list[int]:
        return reward_input_ids(tokenizer, self.prompt, self.answer, self.ended)


@dataclass(frozen=True)
class TemplatedText:
    """OpenRLHF's `query` (templated prompt and answer as one text, decoded with its
    special tokens) and its `prompts` entry (the templated prompt). Where the query
    starts with the prompt, the two parts are tokenized apart, as the app does: the
    templated prompt tokenizes to the chat template's ids, and encoding the whole text
    at once could merge tokens across the boundary. Padding that OpenRLHF decoded along
    (pad or EOS strings around the text) is dropped; EOS at the end means the answer
    ended, and is scored once. Without a matching prompt the text is tokenized whole."""

    query: str
    prompt: str | None = None

    def input_ids(self, tokenizer) -> list[int]:
        fillers = [t for t in {tokenizer.pad_token, tokenizer.eos_token} if t]
        text, ended = strip_fillers(self.query, fillers)
        prompt = strip_fillers(self.prompt, fillers)[0] if self.prompt else ""
        head, answer = (prompt, text[len(prompt):]) if prompt and text.startswith(prompt) else ("", text)
        ids = tokenizer(head, add_special_tokens=False)["input_ids"] if head else []
        return ids + tokenizer(answer, add_special_tokens=False)["input_ids"] + (
            [tokenizer.eos_token_id] if ended else [])


def strip_fillers(text: str, fillers: Sequence[str]) -> tuple[str, bool]:
    """`text` without the filler tokens at either end, and whether any ended it."""
    ended = False
    while any(text.startswith(f) for f in fillers):
        text = text[len(next(f for f in fillers if text.startswith(f))):]
    while any(text.endswith(f) for f in fillers):
        text, ended = text[: -len(next(f for f in fillers if text.endswith(f)))], True
    return text, ended


WorkItem = ChatAnswer | TemplatedText


@dataclass
class LoadedVersion:
    version: ServedVersion
    scorer: object
    """training.ml.reward_scoring.RewardScorer (loaded on first use: it imports torch)."""


# transformers' loading switches process-wide state (weight initialization off while
# from_pretrained runs): two loads at once in one process can leave it switched off.
LOADING = threading.Lock()


def load_version(version: ServedVersion, device=None, precision: str | None = None) -> LoadedVersion:
    from training.ml.reward_scoring import RewardScorer

    with LOADING:
        scorer = RewardScorer.load(Path(version.base_model_dir), Path(version.weights_dir), version.mean,
                                   version.std, device, precision)
    return LoadedVersion(version, scorer)


class PendingRequest:
    """One request's answers waiting to be scored; `wait` returns its rewards and the
    version that scored them, or raises its Refusal."""

    def __init__(self, items: Sequence[WorkItem]) -> None:
        self.items = list(items)
        self.rewards: list[float] | None = None
        self.version: ServedVersion | None = None
        self.refusal: Refusal | None = None
        self.done = threading.Event()

    def finish(self, rewards: list[float], version: ServedVersion) -> None:
        self.rewards, self.version = rewards, version
        self.done.set()

    def fail(self, refusal: Refusal) -> None:
        self.refusal = refusal
        self.done.set()

    def wait(self, timeout: float) -> tuple[list[float], ServedVersion]:
        if not self.done.wait(timeout):
            raise Refusal(503, f"no scores within {timeout:.0f} s; the server is overloaded")
        if self.refusal is not None:
            raise self.refusal
        return self.rewards, self.version


class MicroBatcher:
    """The scoring thread: collects waiting requests into batches and scores each batch
    with the version `current()` gives at its start."""

    def __init__(self, current: Callable[[], LoadedVersion], max_batch: int, wait_s: float) -> None:
        self.current, self.max_batch, self.wait_s = current, max_batch, wait_s
        self.waiting: queue.Queue[PendingRequest | None] = queue.Queue()
        self.batches = 0
        self.thread = threading.Thread(target=self.run, name="reward-scoring", daemon=True)

    def submit(self, items: Sequence[WorkItem]) -> PendingRequest:
        pending = PendingRequest(items)
        self.waiting.put(pending)
        return pending

    def stop(self) -> None:
        self.waiting.put(None)
        self.thread.join(30)

    def run(self) -> None:
        while (first := self.waiting.get()) is not None:
            batch, answers = [first], len(first.items)
            deadline = time.monotonic() + self.wait_s
            stopping = False
            while answers < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    more = self.waiting.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
                answers += len(more.items)
            self.score(batch)
            if stopping:
                return

    def score(self, batch: list[PendingRequest]) -> None:
        loaded = self.current()  # one version for the whole batch
        built: list[tuple[PendingRequest, list[list[int]]]] = []
        for pending in batch:
            try:
                built.append((pending, [item.input_ids(loaded.scorer.tokenizer) for item in pending.items]))
            except Exception as error:  # a chat template refusing the messages, say: this request only
                pending.fail(Refusal(422, f"could not build the model's input: {type(error).__name__}: {error}"))
        try:
            self.score_built(loaded, built)
        except Exception:
            if len(built) == 1:
                log.exception("scoring failed")
                built[0][0].fail(Refusal(500, "scoring failed; the server's log has the error"))
                return
            for one in built:  # find the request that fails, so the others still get their scores
                self.score_alone(loaded, one)
        self.batches += 1

    def score_alone(self, loaded: LoadedVersion, one: tuple[PendingRequest, list[list[int]]]) -> None:
        try:
            self.score_built(loaded, [one])
        except Exception:
            log.exception("scoring failed")
            one[0].fail(Refusal(500, "scoring failed; the server's log has the error"))

    def score_built(self, loaded: LoadedVersion, built: list[tuple[PendingRequest, list[list[int]]]]) -> None:
        flat = [ids for _, request_ids in built for ids in request_ids]
        if not flat:
            return
        rewards = loaded.scorer.score_input_ids(flat, batch_size=self.max_batch).tolist()  # (answers,)
        start = 0
        for pending, request_ids in built:
            pending.finish(rewards[start : start + len(request_ids)], loaded.version)
            start += len(request_ids)


# Request bodies. Limits that a config sets (items, characters) are checked after the
# schema, with 413; a body of the wrong shape is a 422.


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class RewardItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: list[Message] = Field(min_length=1)
    answer: str
    ended: bool = True
    """False for an answer cut off before its EOS (scored without one, as the app does)."""


class RewardsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[RewardItem] = Field(min_length=1)


class OpenRLHFRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenRLHF also sends `labels`; a reward model has no use for them
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None


class RewardServer:
    """The HTTP server, its scoring thread and (following `latest`) its watcher.
    `newest()` names the run's newest version; None pins the one given."""

    def __init__(self, config: RewardServerConfig, version: ServedVersion, authorizer: Authorizer,
                 newest: Callable[[], ServedVersion | None] | None = None,
                 load: Callable[[ServedVersion], LoadedVersion] = load_version) -> None:
        self.config, self.authorizer, self.newest, self.load = config, authorizer, newest, load
        self.loaded = load(version)
        self.failed_versions: set[int] = set()
        self.stopping = threading.Event()
        self.batcher = MicroBatcher(lambda: self.loaded, config.max_batch, config.batch_wait_ms / 1000)
        self.http = RewardHTTPServer((config.host, config.port), request_handler(self))
        self.http.daemon_threads = True
        self.threads = [self.batcher.thread, threading.Thread(target=self.http.serve_forever, name="reward-http",
                                                              daemon=True)]
        if newest is not None:
            self.threads.append(threading.Thread(target=self.follow, name="reward-follow", daemon=True))

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RewardServer:
        for thread in self.threads:
            thread.start()
        log.info("serving reward model v%s of run %s at %s", self.loaded.version.number, self.loaded.version.run,
                 self.url)
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.http.shutdown()
        self.http.server_close()
        self.batcher.stop()
        for thread in self.threads[2:]:  # the watcher, which may be loading a version
            thread.join(60)

    def follow(self) -> None:
        """Swap in the run's newest version when it changes. Loading happens here, beside
        the version serving; the swap is one reference assignment between batches."""
        while not self.stopping.wait(self.config.poll_seconds):
            try:
                newest = self.newest()
            except Exception:
                log.exception("could not ask for the newest reward model; still serving v%s",
                              self.loaded.version.number)
                continue
            if newest is None or newest.number == self.loaded.version.number or newest.number in self.failed_versions:
                continue
            try:
                loaded = self.load(newest)
            except Exception:
                log.exception("could not load reward model v%s; still serving v%s", newest.number,
                              self.loaded.version.number)
                self.failed_versions.add(newest.number)
                continue
            previous, self.loaded = self.loaded.version.number, loaded
            log.info("now serving reward model v%s (was v%s)", newest.number, previous)

    def score(self, items: Sequence[WorkItem]) -> tuple[list[float], ServedVersion]:
        return self.batcher.submit(items).wait(self.config.request_timeout_s)

    # What each endpoint does with a body already parsed as JSON.

    def rewards(self, body: object) -> dict:
        request = parse(RewardsRequest, body)
        self.check_size(len(request.items), (sum(len(m.content) for m in item.prompt) + len(item.answer)
                                             for item in request.items))
        rewards, version = self.score([ChatAnswer([m.model_dump() for m in item.prompt], item.answer, item.ended)
                                       for item in request.items])
        return {"rewards": rewards, "reward_model": version.describe()}

    def openrlhf_rewards(self, body: object) -> dict:
        request = parse(OpenRLHFRequest, body)
        prompts = request.prompts
        if prompts is not None and len(prompts) != len(request.query):
            raise Refusal(422, f"'prompts' has {len(prompts)} entries and 'query' {len(request.query)}; "
                               "give one prompt per query, or none")
        self.check_size(len(request.query), (len(q) for q in request.query))
        rewards, version = self.score([TemplatedText(q, prompts[i] if prompts else None)
                                       for i, q in enumerate(request.query)])
        # `scores` too: newer OpenRLHF reads it for dynamic filtering.
        return {"rewards": rewards, "scores": rewards, "reward_model": version.describe()}

    def check_size(self, items: int, chars) -> None:
        if items > self.config.max_items:
            raise Refusal(413, f"{items} answers in one request; at most {self.config.max_items}")
        longest = max(chars)
        if longest > self.config.max_chars:
            raise Refusal(413, f"an answer with its prompt has {longest} characters; at most {self.config.max_chars}")


class RewardHTTPServer(ThreadingHTTPServer):
    # The listen backlog: socketserver's 5 overflows when a trainer's many workers
    # connect at once, and a refused SYN is retried a second later (a 1 s latency spike).
    request_queue_size = 128


def parse(schema: type[BaseModel], body: object) -> BaseModel:
    try:
        return schema.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise Refusal(422, f"invalid request: {problems}") from None


def bearer_key(headers) -> str | None:
    """The key of `Authorization: Bearer <key>` (PrefLoop's API) or `X-Api-Key: <key>`
    (what OpenRLHF's serve_rm accepts besides)."""
    authorization = headers.get("Authorization") or ""
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return (headers.get("X-Api-Key") or "").strip() or None


def request_handler(server: RewardServer) -> type[BaseHTTPRequestHandler]:
    routes = {("POST", "/v1/rewards"): server.rewards, ("POST", "/get_reward"): server.openrlhf_rewards,
              ("GET", "/v1/reward-model"): lambda body: {"reward_model": server.loaded.version.describe()}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share one connection and thread
        server_version = "PrefLoopRewardServer/1"

        def do_GET(self) -> None:
            self.answer_request("GET")

        def do_POST(self) -> None:
            self.answer_request("POST")

        def answer_request(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            self.body_read = False
            try:
                if (method, path) == ("GET", "/health"):
                    return self.send_json(200, {"status": "ok"})
                endpoint = routes.get((method, path))
                if endpoint is None:
                    known = sorted(p for _, p in routes) + ["/health"]
                    status = 405 if any(p == path for _, p in routes) else 404
                    raise Refusal(status, f"{method} {path} is not an endpoint here; try {', '.join(known)}")
                server.authorizer.check(bearer_key(self.headers))
                body = self.read_json() if method == "POST" else None
                self.send_json(200, endpoint(body))
            except Refusal as refusal:
                if method == "POST" and not self.body_read:
                    self.close_connection = True  # its body is unread: the connection cannot go on
                self.send_json(refusal.status, {"error": refusal.message, **refusal.extra},
                               {"WWW-Authenticate": 'Bearer realm="prefloop"'} if refusal.status == 401 else {})
            except Exception:
                log.exception("%s %s failed", method, path)
                self.send_json(500, {"error": "the server failed; its log has the error"})

        def read_json(self) -> object:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise Refusal(411, "send the body with a Content-Length header")
            if int(length) > server.config.max_body_bytes:
                raise Refusal(413, f"the body has {int(length)} bytes; at most {server.config.max_body_bytes}")
            data = self.rfile.read(int(length))
            self.body_read = True
            try:
                return json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise Refusal(400, f"the body is not JSON: {error}") from None

        def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                server.authorizer.release()

        def log_message(self, format: str, *args) -> None:  # the access log, at debug level, keys never in it
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
