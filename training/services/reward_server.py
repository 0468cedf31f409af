"""What `manage.py serve_reward_model` needs from the database: which version of a run
to serve (a number, or the newest, asked again while it runs), and who may call it.
The server itself is training/ml/reward_server.py.

Who may call: researchers' (staff) tokens, as for every API endpoint but labeling. An
annotator's token is refused (403): the reward model is what their labels train, and
people who can see its scores can label toward them instead of judging for themselves;
the model's judgement is also what the exports and the REST API keep to staff.
"""

from __future__ import annotations

from django.db import close_old_connections, connection

from api.services import user_for_key
from training.ml.reward_server import Authorizer, Refusal, RewardServer, RewardServerConfig, ServedVersion
from training.models import RewardModelVersion, Run
from training.services.runs import latest_reward_model


class RewardServerError(ValueError):
    """The run or version cannot be served; the message says why."""


def served_version(version: RewardModelVersion) -> ServedVersion:
    return ServedVersion(
        number=version.number, run=version.run.name, base_model_dir=version.base_model_dir,
        weights_dir=version.weights_dir, mean=version.reward_mean, std=version.reward_std,
        about={"label_count": version.label_count, "heldout_accuracy": version.heldout_accuracy,
               "created_at": version.created_at.isoformat()})


def version_to_serve(run_name: str, number: int | None) -> ServedVersion:
    """Version `number` of the run (its own, or the one a branch inherited), or with
    None its newest."""
    run = Run.objects.filter(name=run_name).first()
    if run is None:
        names = ", ".join(Run.objects.order_by("name").values_list("name", flat=True)[:20]) or "none yet"
        raise RewardServerError(f"there is no run {run_name!r} (runs: {names})")
    if number is None:
        version = latest_reward_model(run)
        if version is None:
            raise RewardServerError(f"run {run_name!r} has no reward model yet; train one first "
                                    "(manage.py train_reward_model)")
        return served_version(version)
    version = RewardModelVersion.objects.select_related("run").filter(number=number).first()
    if version is None or (version.run_id != run.pk and version.pk != run.inherited_reward_model_id):
        raise RewardServerError(f"run {run_name!r} has no reward model version {number}")
    return served_version(version)


def newest_version_of(run_name: str):
    """A callable the server's watcher polls: the run's newest version, one indexed
    query (the run's name is unique)."""

    def newest() -> ServedVersion | None:
        close_old_connections()  # a connection the database dropped is reopened, not reused
        run = Run.objects.filter(name=run_name).first()
        version = latest_reward_model(run) if run is not None else None
        return served_version(version) if version is not None else None

    return newest


class StaffTokenAuthorizer(Authorizer):
    """A PrefLoop API token of an active researcher (api/services.py user_for_key)."""

    def check(self, key: str | None) -> None:
        if not key:
            raise Refusal(401, "a valid API token is required: send 'Authorization: Bearer <key>' "
                               "(make one at /account/tokens)")
        user = user_for_key(key)
        if user is None:
            raise Refusal(401, "this API token is unknown or revoked (make one at /account/tokens)")
        if not user.is_staff:
            raise Refusal(403, "the reward-model server needs a researcher's (staff) token")

    def release(self) -> None:
        connection.close()  # each connection's thread has its own database connection


def reward_server(run_name: str, number: int | None, config: RewardServerConfig, device=None,
                  precision: str | None = None) -> RewardServer:
    """A server (not started) for version `number` of the run, or its newest (None),
    following the newest as it changes."""
    from training.ml.reward_server import load_version

    version = version_to_serve(run_name, number)
    return RewardServer(config, version, StaffTokenAuthorizer(),
                        newest=newest_version_of(run_name) if number is None else None,
                        load=lambda v: load_version(v, device, precision))
