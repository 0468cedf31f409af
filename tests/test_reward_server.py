"""The reward-model server (issue 31, item 1): a real server on a free port, in threads of
the test process, scoring with the tiny reward model. Its rewards are the app scorer's,
`latest` switches to a newly published version while requests keep coming, only
researchers' tokens get in, oversized and malformed requests get JSON 4xx answers, and
its client drives TRL's GRPOTrainer as a reward function."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from django.core.management import CommandError, call_command

from api.services import create_token
from tests.conftest import save_tiny_reward_model
from tests.processes import wait_for
from training.ml.reward_client import RewardServerClient, RewardServerError
from training.ml.reward_scoring import RewardScorer
from training.ml.reward_server import RewardServerConfig
from training.models import RewardModelVersion
from training.services.reward_models import load_scorer
from training.services.reward_server import reward_server

pytestmark = pytest.mark.django_db(transaction=True)  # the server's threads read what the test writes

ITEMS = [
    ([{"role": "user", "content": "Name three fruits."}], "Apples, pears and plums.", True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"}],
     "Paris", True),
    ([{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once there was a dragon."},
      {"role": "user", "content": "Go on."}], "The dragon baked bread", False),
    ([{"role": "user", "content": "Say hi."}], " Hi!\n", True),
]


def as_body(items) -> list[dict]:
    return [{"prompt": prompt, "answer": answer, "ended": ended} for prompt, answer, ended in items]


@pytest.fixture(scope="module")
def reward_dirs(tiny_model_dir, tmp_path_factory):
    """Two tiny reward models whose scores differ clearly (opposite heads)."""
    return (save_tiny_reward_model(tiny_model_dir, tmp_path_factory.mktemp("rm1"), head_scale=30.0),
            save_tiny_reward_model(tiny_model_dir, tmp_path_factory.mktemp("rm2"), head_scale=-30.0))


def publish(run, number: int, weights, mean: float, std: float) -> RewardModelVersion:
    return RewardModelVersion.objects.create(number=number, run=run, base_model_dir=run.base_model_dir,
                                             weights_dir=str(weights), label_count=number * 10,
                                             reward_mean=mean, reward_std=std)


@pytest.fixture
def v1(tiny_run, reward_dirs):
    return publish(tiny_run, 1, reward_dirs[0], 0.2, 1.5)


@pytest.fixture
def keys(people):
    return {"staff": create_token(people.researcher, "trainer")[1],
            "annotator": create_token(people.annotator, "labels")[1]}


@pytest.fixture
def serve(tiny_run):
    """serve(number=None, **config): a started server for the tiny run, stopped after the test."""
    started = []

    def start(number=None, **config):
        server = reward_server(tiny_run.name, number, RewardServerConfig(port=0, **config), precision="fp32")
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def call(url: str, path: str, body=None, key: str | None = None, raw: bytes | None = None,
         method: str | None = None) -> tuple[int, dict, dict]:
    """(status, JSON answer, headers) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_rewards_equal_the_app_scorers_on_the_same_inputs(v1, keys, serve):
    server = serve(1)
    client = RewardServerClient(server.url, keys["staff"])

    served = client.score(as_body(ITEMS))

    scorer = load_scorer(v1, "fp32")
    app = scorer.score(ITEMS).tolist()
    assert served == pytest.approx(app, abs=1e-5)
    assert max(app) - min(app) > 0.5  # the items score apart, so a mix-up would show
    assert client.reward_model["version"] == 1 and client.reward_model["reward_std"] == 1.5

    # OpenRLHF's protocol: templated prompt + answer as one text, as OpenRLHF decodes
    # it (its padding around it, EOS when the answer ended), and the templated prompts.
    tokenizer = scorer.tokenizer
    prompts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p, _, _ in ITEMS]
    queries = [prompt + answer + (tokenizer.eos_token if ended else "")
               for prompt, (_, answer, ended) in zip(prompts, ITEMS, strict=True)]
    queries[0] = tokenizer.eos_token * 2 + queries[0] + tokenizer.pad_token * 3  # left and right padding
    answer = client.post("/get_reward", {"query": queries, "prompts": prompts, "labels": [None] * 4})
    assert answer["rewards"] == pytest.approx(app, abs=1e-5) and answer["scores"] == answer["rewards"]
    status, whole, _ = call(server.url, "/get_reward", {"query": queries}, keys["staff"])  # no prompts: one text
    assert status == 200 and whole["rewards"] == pytest.approx(app, abs=1e-5)


def test_latest_switches_to_a_new_version_without_a_failed_request(tiny_run, v1, reward_dirs, keys, serve):
    server = serve(None, poll_seconds=0.05, batch_wait_ms=2)
    item = ITEMS[:1]
    # The app's scores first: loading a model here while the server loads v2 would race
    # inside transformers (see training/ml/reward_server.py LOADING).
    scores = {1: load_scorer(v1, "fp32").score(item).item(),
              2: RewardScorer.load(reward_dirs[1], reward_dirs[1], -0.4, 0.5, precision="fp32").score(item).item()}
    seen: list[list[tuple[int, float]]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer(mine: list) -> None:
        client = RewardServerClient(server.url, keys["staff"])
        while not stop.is_set():
            try:
                reward = client.score(as_body(item))[0]
            except BaseException as error:  # noqa: BLE001 - every failure counts
                errors.append(error)
                return
            mine.append((client.reward_model["version"], reward))

    threads = [threading.Thread(target=hammer, args=(mine,)) for mine in seen]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(mine) >= 3 for mine in seen) or errors, 60, "answers from v1")
        publish(tiny_run, 2, reward_dirs[1], -0.4, 0.5)
        wait_for(lambda: all(sum(1 for v, _ in mine if v == 2) >= 3 for mine in seen) or errors, 120,
                 "answers from v2")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    assert not errors
    for mine in seen:
        versions = [v for v, _ in mine]
        assert versions == sorted(versions) and versions[0] == 1 and versions[-1] == 2  # switched once, for good
        for version, reward in mine:
            assert reward == pytest.approx(scores[version], abs=1e-5)
    assert scores[1] != pytest.approx(scores[2], abs=0.1)
    assert server.batcher.batches < sum(len(mine) for mine in seen)  # some requests shared a batch
    status, answer, _ = call(server.url, "/v1/reward-model", key=keys["staff"])
    assert status == 200 and answer["reward_model"]["version"] == 2 and answer["reward_model"]["label_count"] == 20


def test_a_token_without_access_is_refused(v1, keys, serve, people):
    server = serve(1)
    body = {"items": as_body(ITEMS[:1])}
    revoked_token, revoked = create_token(people.researcher, "old")
    revoked_token.revoke()
    for path, payload in [("/v1/rewards", body), ("/get_reward", {"query": ["Hello"]}), ("/v1/reward-model", None)]:
        status, answer, headers = call(server.url, path, payload)
        assert status == 401 and "token" in answer["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        for key in ("plk_not-a-real-key", "garbage", revoked):
            assert call(server.url, path, payload, key)[0] == 401
        status, answer, _ = call(server.url, path, payload, keys["annotator"])
        assert status == 403 and "staff" in answer["error"]
        assert call(server.url, path, payload, keys["staff"])[0] == 200
    assert call(server.url, "/health")[:2] == (200, {"status": "ok"})
    with pytest.raises(RewardServerError) as refused:
        RewardServerClient(server.url, keys["annotator"]).score(as_body(ITEMS[:1]))
    assert refused.value.status == 403


def test_oversized_and_malformed_requests_get_json_errors(v1, keys, serve):
    server = serve(1, max_items=3, max_chars=200, max_body_bytes=4096)
    key = keys["staff"]
    one = as_body(ITEMS[:1])[0]
    cases = [
        ("/v1/rewards", {"items": [one] * 4}, 413, "at most 3"),
        ("/v1/rewards", {"items": [{**one, "answer": "x" * 300}]}, 413, "at most 200"),
        ("/get_reward", {"query": ["y" * 201]}, 413, "at most 200"),
        ("/v1/rewards", {"items": [{"prompt": one["prompt"]}]}, 422, "items.0.answer"),
        ("/v1/rewards", {"items": [{**one, "prompt": [{"role": "robot", "content": "hi"}]}]}, 422, "role"),
        ("/v1/rewards", {"items": [{**one, "prompt": []}]}, 422, "prompt"),
        ("/v1/rewards", {"items": []}, 422, "items"),
        ("/v1/rewards", [1, 2], 422, "invalid request"),
        ("/get_reward", {"query": ["a", "b"], "prompts": ["a"]}, 422, "one prompt per query"),
        ("/get_reward", {"query": "not a list"}, 422, "query"),
        ("/v1/score", {"items": [one]}, 404, "not an endpoint"),
    ]
    for path, body, status, words in cases:
        got, answer, _ = call(server.url, path, body, key)
        assert (got, words in answer["error"]) == (status, True), (path, body, answer)
    got, answer, _ = call(server.url, "/v1/rewards", raw=b"{not json", key=key)
    assert got == 400 and "not JSON" in answer["error"]
    got, answer, _ = call(server.url, "/v1/rewards", raw=b"{" + b" " * 5000 + b"}", key=key)
    assert got == 413 and "4096" in answer["error"]
    assert call(server.url, "/v1/rewards", key=key, method="GET")[0] == 405
    assert call(server.url, "/v1/rewards", {"items": [one]}, key)[0] == 200  # and it still serves


def test_the_command_refuses_what_it_cannot_serve(tiny_run, v1, base_run):
    with pytest.raises(CommandError, match="there is no run 'nope'"):
        call_command("serve_reward_model", "--run", "nope")
    with pytest.raises(CommandError, match="has no reward model yet"):
        call_command("serve_reward_model", "--run", base_run.name)
    with pytest.raises(CommandError, match="has no reward model version 7"):
        call_command("serve_reward_model", "--run", tiny_run.name, "--version", "7")
    with pytest.raises(CommandError, match="has no reward model version 1"):
        call_command("serve_reward_model", "--run", base_run.name, "--version", "1")  # another run's


def test_the_client_is_a_reward_function_for_trls_grpo(v1, keys, serve, tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from training.ml.loading import load_policy

    server = serve(1)
    model, tokenizer = load_policy(tiny_model_dir)
    client = RewardServerClient(server.url, keys["staff"], eos_token_id=tokenizer.eos_token_id)
    calls = []

    def reward_model(prompts, completions, completion_ids, **kwargs):
        rewards = client(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        calls.append((prompts, completions, completion_ids, rewards))
        return rewards

    prompts = [[{"role": "user", "content": f"Say something about the number {n}."}] for n in range(4)]
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, max_steps=1, learning_rate=1e-3, use_cpu=True, bf16=False,
                      gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_model, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": prompts}))
    trainer.train()

    assert trainer.state.global_step == 1 and calls
    scorer = load_scorer(v1, "fp32")
    for called_prompts, completions, ids, rewards in calls:
        assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant"
        samples = [(p, c[0]["content"], tokenizer.eos_token_id in i)
                   for p, c, i in zip(called_prompts, completions, ids, strict=True)]
        assert rewards == pytest.approx(scorer.score(samples).tolist(), abs=1e-4)
    logged = trainer.state.log_history[0]
    assert "rewards/reward_model/mean" in logged or "reward" in logged


def test_manage_py_serve_reward_model_serves_and_follows_the_newest_version(tiny_run, v1, reward_dirs, keys,
                                                                            tmp_path):
    """The real command in a process of its own, on the test database: it serves v1,
    switches to v2 once that is published, and stops on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from django.db import connection

    from tests.processes import PROJECT_DIR

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
           "PREFLOOP_VAR_DIR": str(tmp_path / "var"), "PREFLOOP_TORCH_THREADS": "1"}
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "manage.py", "serve_reward_model", "--run", tiny_run.name,
                                    "--port", str(port), "--poll-seconds", "0.2"], cwd=PROJECT_DIR, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: "Serving reward model v1" in log_path.read_text() or process.poll() is not None, 120,
                 "the server to start")
        assert process.poll() is None, log_path.read_text()[-3000:]
        rewards = RewardServerClient(url, keys["staff"]).score(as_body(ITEMS))
        assert rewards == pytest.approx(load_scorer(v1, "fp32").score(ITEMS).tolist(), abs=1e-5)

        publish(tiny_run, 2, reward_dirs[1], -0.4, 0.5)
        wait_for(lambda: call(url, "/v1/reward-model", key=keys["staff"])[1]["reward_model"]["version"] == 2, 60,
                 "the server to load v2")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "now serving reward model v2 (was v1)" in log_path.read_text()


def test_a_request_whose_input_cannot_be_built_fails_alone_in_its_batch(reward_dirs):
    """Requests share a batch; one the tokenizer refuses gets a 422 and the others
    their scores."""
    from training.ml.reward_server import ChatAnswer, MicroBatcher, Refusal, ServedVersion, load_version

    loaded = load_version(ServedVersion(1, "tiny", str(reward_dirs[0]), str(reward_dirs[0]), 0.0, 1.0),
                          precision="fp32")
    batcher = MicroBatcher(lambda: loaded, max_batch=8, wait_s=0.5)
    good = batcher.submit([ChatAnswer(*ITEMS[0])])
    bad = batcher.submit([ChatAnswer(None, "no prompt at all")])  # the chat template cannot render None
    also_good = batcher.submit([ChatAnswer(*ITEMS[1]), ChatAnswer(*ITEMS[2])])
    batcher.thread.start()
    try:
        rewards, version = good.wait(60)
        with pytest.raises(Refusal) as refused:
            bad.wait(60)
        more, _ = also_good.wait(60)
    finally:
        batcher.stop()
    assert refused.value.status == 422 and "could not build" in refused.value.message
    assert batcher.batches == 1 and version.number == 1
    assert rewards + more == pytest.approx(loaded.scorer.score(ITEMS[:3]).tolist(), abs=1e-5)
