from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from types import SimpleNamespace

# Before Django and Celery read their settings: no hub access, a private redis port for
# the worker tests, and permission for the ORM under Playwright's sync API (it runs an
# event loop in the test thread, which Django would otherwise refuse).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"

import pytest  # noqa: E402

from prefloop.celery import app as celery_app  # noqa: E402

# pytest-django reads the settings before this file runs, so the env var above reaches
# only the worker processes the tests start; the test process's own app is pointed at
# the same private port here.
celery_app.conf.broker_url = os.environ["REDIS_URL"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the tests that neither start workers nor drive chromium in two
    # processes on two cores: one torch thread each, or they would fight for the cores.
    import torch

    torch.set_num_threads(1)

ARTIFACT_DIR = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True)
def fresh_cache():
    """Tests reuse primary keys (rolled back), so a cached per-user value (the labeling
    queue count) must not outlive its test."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """PBKDF2 costs ~0.3 s per user created or signed in, most of many tests' time; the
    default hasher stays listed so the legacy database's accounts still sign in. (The
    worker processes hash nothing.)"""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher",
                                 "django.contrib.auth.hashers.PBKDF2PasswordHasher"]


@pytest.fixture(scope="session")
def gguf_tokenizer():
    from training.ml.base_model import load_gguf_tokenizer, smollm2_gguf_path

    return load_gguf_tokenizer(smollm2_gguf_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gguf_tokenizer) -> Path:
    """A tiny random Llama with SmolLM2's real tokenizer and chat template."""
    from training.ml.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-policy"), gguf_tokenizer)


def save_tiny_reward_model(tiny_model_dir: Path, out: Path, head_scale: float = 1.0) -> Path:
    """The tiny backbone with a random (seeded) score head, `head_scale` times as strong,
    saved as a full reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from training.ml.reward_loading import load_reward_tokenizer

    tokenizer = load_reward_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        model.score.weight.mul_(head_scale)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny reward model with a random score head, saved as a full model."""
    return save_tiny_reward_model(tiny_model_dir, tmp_path_factory.mktemp("tiny-rm"))


@pytest.fixture
def people(django_user_model):
    """The three people every access test needs."""

    return SimpleNamespace(
        researcher=django_user_model.objects.create_user("rita", password="pw-rita-123", is_staff=True),
        annotator=django_user_model.objects.create_user("ann", password="pw-ann-123"),
        outsider=django_user_model.objects.create_user("otto", password="pw-otto-123"),
    )


@pytest.fixture
def base_run(db, tmp_path):
    """The default run, on a base model directory that tests without a model never open."""
    from training.services import create_run

    return create_run("default", str(tmp_path / "no-model-needed"))


@pytest.fixture
def base_policy(base_run):
    """The default run's base version, v0."""
    return base_run.base_version


@pytest.fixture
def tiny_run(db, tiny_model_dir):
    """A run on the tiny random model, for tests that sample or train."""
    from training.services import create_run

    return create_run("tiny", str(tiny_model_dir))


@pytest.fixture
def tiny_base(base_run, tiny_model_dir, settings):
    """The default run on the tiny model, sampling short answers and training its reward
    model quickly. Jobs pin these where they are requested (this process), so the
    worker's environment does not set them."""
    from tests.test_reward_model_training import use_model

    settings.PREFLOOP_MAX_NEW_TOKENS = 8
    use_model(base_run, tiny_model_dir)
    base_run.reward_config.update(learning_rate=0.003, epochs=2, ensemble_size=2)
    base_run.save()
    return base_run.base_version


@pytest.fixture
def make_comparison(base_policy):
    """make_comparison(texts=("left", "right"), prompt="...", **comparison_fields)"""
    from labeling.models import Completion, Prompt
    from labeling.services import create_comparison

    counter = iter(range(1_000_000))

    def make(texts=("first answer", "second answer"), prompt=None, priority=0.0, labels_needed=None, seed=0):
        prompt_obj = Prompt.objects.create(
            messages=[{"role": "user", "content": prompt or f"Prompt number {next(counter)}"}]
        )
        completions = [
            Completion.objects.create(prompt=prompt_obj, policy_version=base_policy, text=t) for t in texts
        ]
        comparison = create_comparison(base_policy.run, prompt_obj, completions, source="initial", priority=priority,
                                       rng=random.Random(seed))
        if labels_needed is not None:
            comparison.labels_needed = labels_needed
            comparison.save(update_fields=["labels_needed"])
        return comparison

    return make
