"""The docs cannot drift (issue 28): every command they show is run by the doc check or
named test, the configuration table lists every variable the settings read, the README
stays a hub whose links and images resolve, and the logins and production settings it
shows are the ones the code uses."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import check_docs  # noqa: E402

DOCS = check_docs.doc_files()

# Blocks only a person runs. A new one is a decision: add it here, with a reason in the
# block's page. (page, first command)
MANUAL = {
    ("README.md", "make demo"),  # starts redis, four workers, beat and gunicorn on port 8000
    ("docs/development.md", "make test-fast"),  # make's install step, then the suite again
    ("docs/experiments.md", "export PREFLOOP_VAR_DIR=/tmp/repro/ab HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1"),  # hours
    # GPUs and a Ray cluster: OpenRLHF and verl training against PrefLoop's reward server
    ("docs/outside-trainer.md", ".venv/bin/python manage.py serve_reward_model --run default --version latest &"),
    ("docs/outside-trainer.md", "import os, requests"),  # verl's reward function, imported by verl
    ("docs/outside-trainer.md", "python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo \\"),
}


def first_command(block: check_docs.Block) -> str:
    return next(line.split("#")[0].strip() for line in block.text.splitlines() if line.split("#")[0].strip())


def test_every_command_block_says_how_it_is_checked_and_its_tests_exist():
    blocks = check_docs.all_blocks()
    assert check_docs.static_problems(blocks) == []
    kinds = {block.kind for block in blocks}
    assert {"runnable", "tested-by"} <= kinds


def test_the_checker_refuses_an_untagged_shell_block_naming_its_file_and_line(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("# x\n\n```sh\nmake demo\n```\n\n```\nno language\n```\n\n"
                    "```sh tested-by=tests/test_docs.py::nope\nls\n```\n\n```text\n$ fine\n```\n")
    problems = check_docs.static_problems(check_docs.blocks_of(page))
    assert [p.split(": ")[0] for p in problems] == [f"{page}:3", f"{page}:7", f"{page}:11"]
    assert "runnable" in problems[0] and "needs a language" in problems[1] and "no test nope" in problems[2]


def test_the_manual_blocks_are_the_pinned_ones():
    manual = {(str(block.path.relative_to(ROOT)), first_command(block))
              for block in check_docs.all_blocks() if block.kind == "manual"}
    assert manual == MANUAL


def settings_variables() -> set[str]:
    text = (ROOT / "prefloop" / "settings.py").read_text()
    names = set(re.findall(r"""env_(?:str|bool|int|float|choice)\(\s*["']([A-Z][A-Z0-9_]*)["']""", text))
    names |= set(re.findall(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""", text))
    return names


def configuration_table() -> dict[str, list[str]]:
    """Variable name -> [type, default, what it does]; a row may name several (`A`, `B`)."""
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if match := re.match(r"\| ((?:`[A-Z][A-Z0-9_]*`(?:, )?)+) \|(.*)\|$", line):
            for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", match[1]):
                rows[name] = [cell.strip() for cell in match[2].split("|")]
    return rows


def app_code_variables() -> set[str]:
    """What the app's own code (not the tests or benchmark scripts) reads from os.environ."""
    names = set()
    for folder in ("prefloop", "labeling", "training", "api", "experiments"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"""os\.environ(?:\.get\(|\[|\.setdefault\()\s*["']([A-Z][A-Z0-9_]*)["']""",
                                    path.read_text()))
    return names


def test_the_configuration_table_lists_every_variable_the_settings_read():
    table = configuration_table()
    assert len(settings_variables()) > 50  # the pattern still finds the settings' helpers
    assert sorted(settings_variables() - set(table)) == []
    assert sorted(app_code_variables() - set(table)) == []
    # Every row has a type, a default and a meaning.
    assert all(len(cells) == 3 and cells[0] and cells[2] for cells in table.values()), table


READ_BY_LIBRARIES = {"CUDA_VISIBLE_DEVICES"}  # listed for operators; CUDA reads it, not our code


def test_every_variable_in_the_table_is_read_somewhere():
    sources = "\n".join(path.read_text() for pattern in ("*/*.py", "*/*/*.py", "*/*/*/*.py", "scripts/*.sh", "Makefile")
                        for path in ROOT.glob(pattern) if ".venv" not in path.parts)
    unread = [name for name in configuration_table()
              if name not in settings_variables() | READ_BY_LIBRARIES and not re.search(rf"\b{name}\b", sources)]
    assert unread == []


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = path.read_text()
    for block in check_docs.blocks_of(path):  # a `# comment` in a code block is no heading
        text = text.replace(block.text, "")
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert broken == []


def test_every_image_in_docs_is_shown_on_a_page():
    text = "\n".join(page.read_text() for page in DOCS)
    shown = {(page.parent / target).resolve() for page in DOCS for target in LINK.findall(page.read_text())}
    assert text and sorted(str(image.relative_to(ROOT)) for image in (ROOT / "docs").rglob("*.png")
                           if image.resolve() not in shown) == []


def test_the_readme_is_a_hub():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme
    linked = set(re.findall(r"\(docs/([\w-]+\.md)", readme))
    assert linked == {page.name for page in (ROOT / "docs").glob("*.md")}
    assert "## Running on GPUs and several machines" in readme and "docs/deploying.md" in readme


def test_the_readme_logins_are_the_ones_the_demo_creates_and_prints():
    from labeling.management.commands.create_demo_users import DEMO_USERS

    readme = (ROOT / "README.md").read_text()
    banner = (ROOT / "scripts" / "demo.sh").read_text()
    for username, password, is_staff in DEMO_USERS:
        row = next(line for line in readme.splitlines() if f"`{username}` / `{password}`" in line)
        assert ("staff" in row) == is_staff
        assert f"{username} / {password}" in banner


def test_the_queues_in_the_readme_are_the_ones_the_demo_starts():
    readme = (ROOT / "README.md").read_text()
    started = set(re.findall(r"worker -Q (\w+)", (ROOT / "scripts" / "demo.sh").read_text()))
    assert started == {"gpu", "train", "refit", "default"}
    assert all(re.search(rf"\b{queue}\b", readme.split("## Architecture")[1].split("##")[0]) for queue in started)


def test_the_documented_production_environment_is_the_one_the_deploy_check_runs():
    from tests.test_deployment import PRODUCTION

    block = next(block for block in check_docs.blocks_of(ROOT / "docs" / "deploying.md")
                 if "test_the_documented_production_settings_pass_the_deploy_check" in " ".join(block.tested_by))
    shown = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", block.text))
    assert {name: value for name, value in shown.items() if name in PRODUCTION and name != "DJANGO_SECRET_KEY"} == \
        {name: value for name, value in PRODUCTION.items() if name != "DJANGO_SECRET_KEY"}
    assert set(PRODUCTION) <= set(shown)


@pytest.mark.slow
def test_every_runnable_block_runs():
    """The runnable blocks, page by page, on the tiny model (about two minutes here)."""
    problems = check_docs.check(run_blocks=True, report=lambda line: None)
    assert problems == [], "\n\n".join(problems)
