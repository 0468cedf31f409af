"""Scoring outside PrefLoop gives PrefLoop's scores (issue 31, item 4): a reward-model
export states how an input is built (prefloop_export.json, README.md) and ships the app's
own input-building and scoring code as score.py, which scores like the app in an
interpreter that cannot import PrefLoop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import save_tiny_reward_model
from training.ml import standalone_scoring
from training.ml.export import MANIFEST, SCORING_FILE
from training.ml.reward_loading import CONFIG_FILE
from training.models import RewardModelVersion
from training.services.exports import reward_model_export
from training.services.reward_models import load_scorer

pytestmark = pytest.mark.django_db

KEEP_LAST = 48
ITEMS = [
    ([{"role": "user", "content": "Name three fruits."}], "Apples, pears and plums.", True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"}],
     "Paris", True),
    ([{"role": "user", "content": "Tell me a story about a dragon who learns to bake bread in a small village."},
      {"role": "assistant", "content": "Once there was a dragon called Ember who wanted to bake."},
      {"role": "user", "content": "Go on, and make it longer this time, with the baker's daughter in it."}],
     "Ember flew to the bakery at dawn, where the baker's daughter", False),  # cut off: no EOS
    ([{"role": "user", "content": "Say hi."}], "\nHi!\n", True),  # leading and trailing newlines, kept as text
]


@pytest.fixture
def exported(tiny_run, tmp_path, settings):
    """A version trained with left truncation (KEEP_LAST tokens), exported."""
    settings.PREFLOOP_EXPORT_DIR = tmp_path / "exports"
    weights = save_tiny_reward_model(tiny_run.base_model_dir, tmp_path / "rm", head_scale=30.0)
    (weights / CONFIG_FILE).write_text(json.dumps({"truncation": "left", "max_length": KEEP_LAST}))
    version = RewardModelVersion.objects.create(number=1, run=tiny_run, base_model_dir=tiny_run.base_model_dir,
                                                weights_dir=str(weights), label_count=3, reward_mean=0.3,
                                                reward_std=1.7)
    return version, Path(reward_model_export(version))


def test_an_export_ships_the_apps_scoring_code_and_says_how_inputs_are_built(exported):
    version, folder = exported

    assert (folder / SCORING_FILE).read_bytes() == Path(standalone_scoring.__file__).read_bytes()
    manifest = json.loads((folder / MANIFEST).read_text())
    spec = manifest["input"]
    assert "add_generation_prompt=True" in spec["prompt"]
    assert "add_special_tokens=False" in spec["answer"]
    assert "no newline" in spec["end_of_answer"]
    assert f"last {KEEP_LAST} tokens" in spec["truncation"]
    assert manifest["export_format"] == 2 and "score(prompt_messages, answer" in manifest["scoring_function"]
    readme = (folder / "README.md").read_text()
    assert "from score import score" in readme and "newline" in readme and spec["prompt"] in readme


def test_the_obvious_way_to_score_builds_another_input(exported):
    """Why the export must say it: the chat template over prompt and answer together
    ends the answer with EOS and a newline, the app's input with EOS alone."""
    _, folder = exported
    model = standalone_scoring.ExportedRewardModel(folder)
    prompt, answer, _ = ITEMS[0]
    obvious = model.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}],
                                                  tokenize=True, return_dict=True)["input_ids"]
    ours = standalone_scoring.reward_input_ids(model.tokenizer, prompt, answer)
    assert ours[-1] == model.tokenizer.eos_token_id
    assert obvious[: len(ours)] == ours and model.tokenizer.decode(obvious[len(ours):]).strip(" ") == "\n"


def test_an_export_scores_like_the_app_in_an_interpreter_without_prefloop(exported, tmp_path):
    version, folder = exported
    # `python -I`: no project directory and no PYTHONPATH on sys.path; the script adds
    # only the export's folder, as a team outside PrefLoop would.
    script = f"""
import json, sys
sys.path.insert(0, {str(folder)!r})
try:
    import training
except ImportError:
    pass
else:
    raise SystemExit("PrefLoop is importable here: " + training.__file__)
from score import score
print(json.dumps([score(prompt, answer, ended) for prompt, answer, ended in json.loads({json.dumps(ITEMS)!r})]))
assert not any(name.split(".")[0] in ("training", "labeling", "prefloop", "api") for name in sys.modules)
"""
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    outside = json.loads(done.stdout.strip().splitlines()[-1])

    inside = load_scorer(version, "fp32").score(ITEMS).tolist()
    assert outside == pytest.approx(inside, abs=1e-4)
    assert max(inside) - min(inside) > 0.1  # the items score differently: the comparison can fail
    tokenizer = load_scorer(version, "fp32").tokenizer
    assert len(standalone_scoring.reward_input_ids(tokenizer, *ITEMS[2])) > KEEP_LAST  # truncation was exercised
