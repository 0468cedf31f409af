"""The doc check: every command shown in README.md and docs/*.md is run here or by a test.

Each fenced block that shows a command (shell or Python) says how it is checked in its
info string, after the language:

    ```sh runnable            run here, in a temporary directory (see below)
    ```sh runnable server     the same, with `manage.py runserver` on a free port and
                              $PREFLOOP (its /api/v1 address) and $TOKEN (a researcher's key)
    ```sh tested-by=tests/test_x.py::test_name[,more]   covered by that test (it must exist)
                              or by a script the suite runs (`tested-by=.ci/run`)
    ```sh manual              run by a person only (make demo, make bench); the list of
                              these is pinned in tests/test_docs.py

Blocks that show output, files or designs use a data language (text, json, toml, ...).
A shell or Python block without one of the three words, or a block with no language at
all, fails the check with its file and line.

Runnable blocks of one page share one temporary directory and run in the page's order:
a fresh SQLite database (migrated), the tiny random Llama the tests use as the base model
(`PREFLOOP_BASE_MODEL_DIR`), a default run on it with 16 comparisons labeled by a
simulated annotator, `HF_HUB_OFFLINE=1`, answers of at most 8 new tokens, a broker
address nothing listens on, and small files the blocks name (`prompts.jsonl`,
`answers.jsonl`). `.venv`, `manage.py`, `deploy/`, `docs/` and
`scripts/` are links to the checkout, so the commands read as they do in the docs.

    .venv/bin/python scripts/check_docs.py            # list and check everything
    .venv/bin/python scripts/check_docs.py --static   # only the tags and tested-by targets
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND_LANGUAGES = {"sh", "bash", "shell", "console", "zsh", "python", "py", "pycon"}
DATA_LANGUAGES = {"text", "json", "jsonl", "toml", "yaml", "yml", "ini", "csv", "html", "diff", "jinja"}
LINKED = [".venv", "manage.py", "deploy", "docs", "scripts"]
BLOCK_TIMEOUT = 300
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    words: list[str]
    text: str
    tested_by: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"

    @property
    def kind(self) -> str:
        if self.language not in COMMAND_LANGUAGES:
            return "data"
        if "runnable" in self.words:
            return "runnable"
        if self.tested_by:
            return "tested-by"
        if "manual" in self.words:
            return "manual"
        return "untagged"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file (CommonMark fences, not indented code)."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        words = opening["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) \
                    and not closing["info"].strip():
                break
            body.append(lines[j])
            j += 1
        language = words[0].lower() if words else ""
        tested_by = [target for word in words[1:] if word.startswith("tested-by=")
                     for target in word.removeprefix("tested-by=").split(",") if target]
        blocks.append(Block(path, i + 1, language, words[1:], "\n".join(body) + "\n", tested_by))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks_of(path)]


def test_names(path: Path) -> set[str]:
    """`name` and `Class::name` for every test function in a test file."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            names.add(node.name)
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"))
    return names


def target_problem(target: str) -> str | None:
    """Why `target` does not name a test or a script the suite runs, or None if it does."""
    file, _, name = target.partition("::")
    path = ROOT / file
    if not path.is_file():
        return f"tested-by={target}: no file {file}"
    if not name:
        return None if os.access(path, os.X_OK) or path.suffix in {".sh", ".py"} else \
            f"tested-by={target}: {file} is not a script"
    if name.split("[")[0] not in test_names(path):
        return f"tested-by={target}: {file} has no test {name}"
    return None


def static_problems(blocks: list[Block]) -> list[str]:
    problems = []
    for block in blocks:
        if not block.language:
            problems.append(f"{block.where}: a fenced block needs a language (sh, python, text, json, ...)")
        elif block.language not in COMMAND_LANGUAGES | DATA_LANGUAGES:
            problems.append(f"{block.where}: unknown language {block.language!r}")
        elif block.kind == "untagged":
            problems.append(f"{block.where}: a {block.language} block must say `runnable`, "
                            f"`tested-by=tests/FILE.py::TEST` or `manual`")
        for target in block.tested_by:
            if problem := target_problem(target):
                problems.append(f"{block.where}: {problem}")
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environment(work: Path, model: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "PREFLOOP_", "DATABASE_URL", "REDIS_URL", "PYTEST_"))}
    env.update(
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="prefloop.settings",
        PREFLOOP_VAR_DIR=str(work / "var"), PREFLOOP_BASE_MODEL_DIR=str(model),
        PREFLOOP_MAX_NEW_TOKENS="8", PREFLOOP_TORCH_THREADS="1",
        # Nothing listens there: a command that enqueues fails the way the docs say it does.
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)


def build_template(template: Path) -> None:
    """Model, migrated database and default run, made once and copied for every page."""
    env = clean_environment(template, template / "model")
    model = ("from pathlib import Path\n"
             "from training.ml.base_model import load_gguf_tokenizer, smollm2_gguf_path\n"
             "from training.ml.tiny_model import build_tiny_model\n"
             "build_tiny_model(Path('model'), load_gguf_tokenizer(smollm2_gguf_path()))\n")
    seed = [{"prompt": f"Say something kind about the colour number {n}."} for n in range(1, 17)]
    (template / "seed-prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in seed))
    manage = [sys.executable, str(ROOT / "manage.py")]
    for args, stdin in [([sys.executable, "-"], model),
                        ([*manage, "migrate", "--noinput", "-v", "0"], None),
                        ([*manage, "prepare_base_model"], None),
                        # Some labels, so that pages about exports and reward models start where a
                        # reader would: with a run that has been labeled.
                        ([*manage, "import_prompts", "seed-prompts.jsonl"], None),
                        ([*manage, "generate_comparisons", "--prompts", "16"], None),
                        ([*manage, "simulate_labels", "--oracle", "longer", "--noise", "0.1", "--n", "16"], None)]:
        done = run(args, template, env, stdin)
        if done.returncode:
            raise RuntimeError(f"preparing the doc check failed: {args}\n{done.stdout}\n{done.stderr}")
    prompts = [{"prompt": f"Write one sentence about the number {n}."} for n in range(1, 41)]
    (template / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    answers = [{"prompt": f"Name a colour that starts with {letter}.",
                "answers": {"model-a": f"{letter}… maybe.", "model-b": f"A colour with {letter}."}}
               for letter in "BGR"]
    (template / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))


def page_directory(template: Path, into: Path) -> Path:
    work = into / "work"
    # The default run names the template's model directory, which outlives every page.
    shutil.copytree(template, work, symlinks=True, ignore=lambda folder, names: ["model"] if folder == str(template)
                    else [])
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    return work


class Server:
    """`manage.py runserver` on a free port, with a researcher's API key."""

    def __init__(self, work: Path, env: dict[str, str]):
        key = run([sys.executable, "-c", (
            "import django; django.setup()\n"
            "from django.contrib.auth import get_user_model\n"
            "from api.services import create_token\n"
            "user = get_user_model().objects.create_user('docs', password='docs-check-pw', is_staff=True)\n"
            "print(create_token(user, 'doc check')[1])\n")], work, env)
        if key.returncode:
            raise RuntimeError(f"could not make an API key:\n{key.stderr}")
        self.port = free_port()
        self.log = open(work / "runserver.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload", "--skip-checks"],
            cwd=work, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.env = {"PREFLOOP": f"http://127.0.0.1:{self.port}/api/v1", "TOKEN": key.stdout.strip().splitlines()[-1]}
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/login/", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"runserver did not start:\n{(work / 'runserver.log').read_text()}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def run_page(blocks: list[Block], template: Path, report=print) -> list[str]:
    """Run one page's runnable blocks in order; the problems, each naming its block."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="check-docs-") as tmp:
        work = page_directory(template, Path(tmp))
        env = clean_environment(work, template / "model")
        server: Server | None = None
        try:
            for block in blocks:
                if "server" in block.words and server is None:
                    server = Server(work, env)
                    env = {**env, **server.env}
                started = time.monotonic()
                if block.language in {"python", "py", "pycon"}:
                    done = run([sys.executable, "-"], work, env, block.text)
                else:
                    done = run(["bash", "-euo", "pipefail", "-c", block.text], work, env)
                report(f"  {block.where}: {'ok' if done.returncode == 0 else 'FAILED'} "
                       f"({time.monotonic() - started:.1f} s)")
                if done.returncode:
                    problems.append(f"{block.where}: exited {done.returncode}\n{block.text}"
                                    f"--- stdout\n{done.stdout[-3000:]}--- stderr\n{done.stderr[-3000:]}")
                    break  # later blocks of the page build on this one
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            problems.append(f"{blocks[0].path.relative_to(ROOT)}: {error}")
        finally:
            if server is not None:
                server.stop()
    return problems


def check(run_blocks: bool = True, report=print) -> list[str]:
    blocks = all_blocks()
    problems = static_problems(blocks)
    counts: dict[str, int] = {}
    for block in blocks:
        counts[block.kind] = counts.get(block.kind, 0) + 1
    report("blocks: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
    if problems or not run_blocks:
        return problems
    pages: dict[Path, list[Block]] = {}
    for block in blocks:
        if block.kind == "runnable":
            pages.setdefault(block.path, []).append(block)
    with tempfile.TemporaryDirectory(prefix="check-docs-template-") as tmp:
        template = Path(tmp)
        build_template(template)
        for path, page_blocks in pages.items():
            report(f"{path.relative_to(ROOT)}: {len(page_blocks)} runnable blocks")
            problems += run_page(page_blocks, template, report)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static", action="store_true", help="check tags and tested-by targets only")
    problems = check(run_blocks=not parser.parse_args().static)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("doc check: " + (f"{len(problems)} problem(s)" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
