"""Exports of policy versions and reward models, built once under var/exports/ and
reused by the download links and `manage.py export_policy` / `export_reward_model`.
The model code is training/ml/export.py."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from django.conf import settings

from training.ml.export import EXPORT_FORMATS, export_policy, export_reward_model
from training.models import PolicyVersion, RewardModelVersion


def exports_dir() -> Path:
    return Path(settings.PREFLOOP_EXPORT_DIR)


def build_once(final: Path, build) -> Path:
    """`final`, built by `build(path)` into a scratch folder and renamed into place, so
    a half-written export is never served; two builders racing keep the first."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    try:
        build(scratch)
        try:
            scratch.rename(final)
        except OSError:  # another request finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def policy_export(version: PolicyVersion, form: str) -> Path:
    """The folder of a policy version exported as `form` ("merged" or "adapter")."""
    if form not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    about = {"kind": "policy", "version": version.number, "run": version.run.name, "method": version.method,
             "parent": version.parent.number if version.parent else None, "config": version.config}
    # The publication time in the name: a database reset must not serve an old model.
    folder = exports_dir() / f"policy-v{version.number}-{form}-{version.created_at:%Y%m%d%H%M%S}"
    return build_once(folder, lambda out: export_policy(
        version.base_model_dir, version.adapter_dir or None, out, form, about))


def reward_model_export(version: RewardModelVersion) -> Path:
    about = {"version": version.number, "run": version.run.name, "label_count": version.label_count,
             "heldout_accuracy": version.heldout_accuracy}
    folder = exports_dir() / f"reward-model-r{version.number}-{version.created_at:%Y%m%d%H%M%S}"
    return build_once(folder, lambda out: export_reward_model(
        version.base_model_dir, version.weights_dir, out, version.reward_mean, version.reward_std, about))
