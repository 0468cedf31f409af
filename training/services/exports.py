"""Exports of policy versions and reward models, built once under var/exports/ and
reused by the download links and `manage.py export_policy` / `export_reward_model`.
The model code is training/ml/export.py."""

from __future__ import annotations

import fcntl
import shutil
import uuid
from pathlib import Path

from django.conf import settings

from training.ml.export import (
    EXPORT_FORMATS,
    REWARD_EXPORT_FORMAT,
    export_policy,
    export_precision,
    export_reward_model,
)
from training.models import PolicyVersion, RewardModelVersion


def exports_dir() -> Path:
    return Path(settings.PREFLOOP_EXPORT_DIR)


def build_once(final: Path, build) -> Path:
    """`final`, built by `build(path)` into a scratch folder and renamed into place, so
    a half-written export is never served. A lock file makes a second request for the
    same export wait for the first build instead of merging the model again (on a
    shared PREFLOOP_VAR_DIR the lock holds across machines only where the file system
    supports flock)."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(f".{final.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # built while this request waited
            return final
        for leftover in final.parent.glob(f".{final.name}.*.partial"):  # a build killed midway
            shutil.rmtree(leftover, ignore_errors=True)
        scratch = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
        try:
            build(scratch)
            scratch.rename(final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def policy_export(version: PolicyVersion, form: str, dtype: str = "fp32") -> Path:
    """The folder of a policy version exported as `form` ("merged" or "adapter"), a
    merged one's weights in `dtype` (fp32, bf16, fp16)."""
    if form not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    export_precision(dtype)  # ValueError naming the dtypes
    dtype = dtype if form == "merged" else "fp32"  # an adapter is exported as trained
    about = {"kind": "policy", "version": version.number, "run": version.run.name, "method": version.method,
             "parent": version.parent.number if version.parent else None, "config": version.config}
    # The publication time in the name: a database reset must not serve an old model.
    suffix = "" if dtype == "fp32" else f"-{dtype}"  # fp32 exports keep the folder names they had
    folder = exports_dir() / f"policy-v{version.number}-{form}{suffix}-{version.created_at:%Y%m%d%H%M%S}"
    return build_once(folder, lambda out: export_policy(
        version.base_model_dir, version.adapter_dir or None, out, form, about, dtype=dtype))


def reward_model_export(version: RewardModelVersion, dtype: str = "fp32") -> Path:
    about = {"version": version.number, "run": version.run.name, "label_count": version.label_count,
             "heldout_accuracy": version.heldout_accuracy}
    export_precision(dtype)
    suffix = "" if dtype == "fp32" else f"-{dtype}"
    # The export format in the name: a folder built before score.py existed is not served.
    folder = (exports_dir() / f"reward-model-r{version.number}{suffix}-f{REWARD_EXPORT_FORMAT}"
                              f"-{version.created_at:%Y%m%d%H%M%S}")
    return build_once(folder, lambda out: export_reward_model(
        version.base_model_dir, version.weights_dir, out, version.reward_mean, version.reward_std, about,
        dtype=dtype))
