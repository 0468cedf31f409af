"""Deployment settings (issue 12): the documented production environment passes
`manage.py check --deploy`, and without DJANGO_SECRET_KEY a local install signs with its
own random key, never one written in the source."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {  # docs/deploying.md, "Every machine: torch, one database, one broker"
    "DJANGO_SECRET_KEY": "k7#x!q2" * 8, "DJANGO_ALLOWED_HOSTS": "label.example.org",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://label.example.org", "PREFLOOP_HTTPS": "true",
    "DJANGO_TRUST_FORWARDED_PROTO": "true", "DJANGO_HSTS_PRELOAD": "true",
}


def manage(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PREFLOOP_"))}
    clean.update({"PREFLOOP_VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "prefloop.settings"}, **env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=120)


def test_the_documented_production_settings_pass_the_deploy_check(tmp_path):
    checked = manage(["check", "--deploy", "--fail-level", "WARNING"], PRODUCTION, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout
    # The plain demo settings are not production: the same check names what is missing.
    demo = manage(["check", "--deploy", "--fail-level", "WARNING"], {}, tmp_path)
    assert demo.returncode != 0 and "SECURE_HSTS_SECONDS" in demo.stdout + demo.stderr


def test_without_a_key_a_local_install_makes_its_own_once(tmp_path):
    show = ["shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY)"]
    first, second = (manage(show, {}, tmp_path).stdout.strip().splitlines()[-1] for _ in range(2))
    key_file = tmp_path / "var" / "secret-key"
    assert first == second == key_file.read_text().strip() and len(first) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "insecure" not in first
    other = tmp_path / "other"
    assert manage(show, {"PREFLOOP_VAR_DIR": str(other)}, tmp_path).stdout.strip().splitlines()[-1] != first


def test_a_real_host_without_a_key_refuses_to_start(tmp_path):
    refused = manage(["check"], {"DJANGO_ALLOWED_HOSTS": "label.example.org"}, tmp_path)
    assert refused.returncode != 0 and "set DJANGO_SECRET_KEY" in refused.stderr


def test_a_job_across_machines_needs_a_node_launcher_and_workers_read_it(tmp_path):
    refused = manage(["check"], {"PREFLOOP_TRAIN_MACHINES": "2"}, tmp_path)
    assert refused.returncode != 0 and "PREFLOOP_NODE_LAUNCHER" in refused.stderr
    show = ["shell", "-c", "from training.services.jobs import worker_launch_config; c = worker_launch_config(); "
                           "print(c.machines, c.main_process_ip, c.main_process_port, c.node_launcher)"]
    env = {"PREFLOOP_TRAIN_MACHINES": "3", "PREFLOOP_MAIN_PROCESS_IP": "10.1.2.3",
           "PREFLOOP_MAIN_PROCESS_PORT": "29511", "PREFLOOP_NODE_LAUNCHER": "ssh gpu{rank} {command}"}
    shown = manage(show, env, tmp_path)
    assert shown.stdout.strip().splitlines()[-1] == "3 10.1.2.3 29511 ssh gpu{rank} {command}", shown.stderr
