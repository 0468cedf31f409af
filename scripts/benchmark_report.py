"""Shared by the benchmark scripts: how a run describes itself and where it writes."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"


def command_line() -> str:
    return shlex.join([os.path.relpath(sys.executable, ROOT), os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def machine_lines() -> list[str]:
    import django
    import torch

    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return [
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {len(os.sched_getaffinity(0))} CPUs ({cpu.group(1) if cpu else 'unknown model'}), {device}, "
        f"Python {platform.python_version()}, Django {django.get_version()}, torch {torch.__version__}",
    ]


def replace_section(heading: str, section: str) -> None:
    """Put `section` (starting with `heading`) into docs/benchmarks.md in place of the
    previous run's, leaving the other sections as they are."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    old = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)  # up to the next section
    section = section.rstrip("\n") + "\n\n"
    text = old.sub(lambda _: section, text, count=1) if old.search(text) else f"{text.rstrip()}\n\n{section}"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text.rstrip("\n") + "\n")
