"""Runs: the single loop becomes the default run, and everything it made belongs to it.

Versions, reward models, rounds, jobs and the evaluation set get a run; a round's kind
becomes a recipe (its stage list); PPO jobs and stages become policy updates by the
`ppo` method; the loop's stop state moves onto the run. Jobs that were still waiting or
running when the database was upgraded are cancelled (their parameters predate pinned
configs), and a round that was running is marked failed with that reason: labels and
published versions are untouched, and each can be requested again.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

UPGRADE_NOTE = "cancelled by the upgrade to runs; request it again"
STAGES_OF_KIND = {
    "full": ("rlhf", ["reward_model", "policy_update", "comparisons", "evaluation"]),
    "ppo": ("direct", ["policy_update", "comparisons", "evaluation"]),
}


def legacy_settings() -> dict:
    """What the loop ran with before runs: the deployment's environment, read when each
    job ran. Snapshotted here, spelled out (no app code imported: a migration must keep
    working as the app changes); fields left out take the method's defaults when read."""

    def value(name, default):
        return getattr(settings, name, default)

    return {
        "method_config": {
            "batch_size": value("PREFLOOP_PPO_BATCH_SIZE", 8),
            "response_length": value("PREFLOOP_PPO_RESPONSE_LENGTH", 64),
            "total_episodes": value("PREFLOOP_PPO_EPISODES", 0) or None,
            "learning_rate": value("PREFLOOP_PPO_LEARNING_RATE", 3e-5),
            "kl_coef": value("PREFLOOP_PPO_KL_COEF", 0.05),
            "reference": value("PREFLOOP_PPO_REFERENCE", "initial"),
        },
        "reward_config": {
            "use_lora": not value("PREFLOOP_RM_FULL_FINETUNE", False),
            "learning_rate": value("PREFLOOP_RM_LEARNING_RATE", 0.0) or None,
            "epochs": value("PREFLOOP_RM_EPOCHS", 1.0),
            "batch_size": value("PREFLOOP_RM_BATCH_SIZE", 8),
            "ensemble_size": value("PREFLOOP_RM_ENSEMBLE_SIZE", 5),
        },
        "query_selection": value("PREFLOOP_QUERY_SELECTION", "disagreement"),
        "update_prompts": value("PREFLOOP_PPO_PROMPTS", 64),
        "comparison_prompts": value("PREFLOOP_ROUND_COMPARISON_PROMPTS", 16),
        "auto_loop": value("PREFLOOP_AUTO_LOOP", False),
        "loop_min_labels": value("PREFLOOP_LOOP_MIN_LABELS", 32),
        "reward_auto_train_labels": value("PREFLOOP_RM_AUTO_TRAIN_LABELS", 32),
    }


def create_default_run(apps, schema_editor):
    Run = apps.get_model("training", "Run")
    PolicyVersion = apps.get_model("training", "PolicyVersion")
    base = PolicyVersion.objects.filter(parent=None).order_by("number").first()
    if base is None:
        return  # a fresh database: the default run is created with the base model
    state = apps.get_model("training", "LoopState").objects.filter(pk=1).first()
    run = Run.objects.create(
        name="default", description="The loop as it ran before runs existed.", base_model_dir=base.base_model_dir,
        base_version=base, head=PolicyVersion.objects.order_by("-number").first(), method="ppo", recipe="rlhf",
        paused=bool(state and state.paused), paused_by=state.paused_by if state else None,
        paused_at=state.paused_at if state else None, pause_reason=state.reason if state else "",
        **legacy_settings(),
    )
    for version in PolicyVersion.objects.all():
        version.run = run
        if version.adapter_dir:  # every version after the base was a PPO round
            version.method = "ppo"
            config = dict(version.config)
            version.inputs = {"start_version": version.parent.number if version.parent_id else None,
                              "reward_model": config.pop("reward_model", None),
                              "prompt_count": config.pop("prompts", None), "seed": config.get("seed")}
            version.config = config
        version.save()
    for model in ("RewardModelVersion", "Job", "Round", "EvaluationPrompt"):
        apps.get_model("training", model).objects.update(run=run)

    Job = apps.get_model("training", "Job")
    Job.objects.filter(kind="ppo").update(kind="policy_update")
    now = django.utils.timezone.now()
    Job.objects.filter(status__in=["pending", "running"]).update(status="cancelled", error=UPGRADE_NOTE,
                                                                 finished_at=now)
    Round = apps.get_model("training", "Round")
    for round_ in Round.objects.all():
        round_.recipe, round_.stages = STAGES_OF_KIND[round_.kind]
        round_.stage = "policy_update" if round_.stage == "ppo" else round_.stage
        if round_.status == "running":
            round_.status, round_.error, round_.finished_at = "failed", UPGRADE_NOTE, now
        round_.save()


class Migration(migrations.Migration):

    dependencies = [
        ("labeling", "0001_initial"),
        ("training", "0004_evaluation"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="Run",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100, unique=True)),
                ("description", models.TextField(blank=True)),
                ("base_model_dir", models.CharField(help_text="Hugging Face model directory of the base policy.", max_length=1000)),
                ("base_version", models.ForeignKey(blank=True, help_text="The initial policy: the base model itself.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="training.policyversion")),
                ("head", models.ForeignKey(blank=True, help_text="The version rounds start from.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="training.policyversion")),
                ("parent_run", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="branches", to="training.run")),
                ("branched_from", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="branches", to="training.policyversion")),
                ("inherited_label_id", models.BigIntegerField(default=0, help_text="A branch also learns from its parent run's labels up to this id.")),
                ("inherited_reward_model", models.ForeignKey(blank=True, help_text="A branch's reward model until it trains its own.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="training.rewardmodelversion")),
                ("method", models.CharField(help_text="Policy-update method (training/ml/methods).", max_length=32)),
                ("method_config", models.JSONField(blank=True, default=dict)),
                ("reward_config", models.JSONField(blank=True, default=dict)),
                ("recipe", models.CharField(default="rlhf", max_length=32)),
                ("query_selection", models.CharField(choices=[("disagreement", "Ensemble disagreement"), ("random", "Random")], default="disagreement", max_length=16)),
                ("update_prompts", models.PositiveIntegerField(default=64, help_text="Prompts sampled for one policy update.")),
                ("comparison_prompts", models.PositiveIntegerField(default=16, help_text="Prompts that get comparisons per round.")),
                ("auto_loop", models.BooleanField(default=False, help_text="Start a round by itself after enough new labels.")),
                ("loop_min_labels", models.PositiveIntegerField(default=32)),
                ("reward_auto_train_labels", models.PositiveIntegerField(default=32, help_text="Train a reward model by itself after this many new labels; 0 = only by hand.")),
                ("paused", models.BooleanField(default=False)),
                ("paused_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                ("paused_at", models.DateTimeField(blank=True, null=True)),
                ("pause_reason", models.CharField(blank=True, max_length=500)),
                ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"ordering": ["pk"]},
        ),
        # Nullable first, filled by create_default_run, then required below.
        migrations.AddField("policyversion", "run", models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="versions", to="training.run")),
        migrations.AddField("rewardmodelversion", "run", models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="reward_models", to="training.run")),
        migrations.AddField("round", "run", models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="rounds", to="training.run")),
        migrations.AddField("job", "run", models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="jobs", to="training.run")),
        migrations.AddField("evaluationprompt", "run", models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE, related_name="evaluation_prompts", to="training.run")),
        migrations.AddField("policyversion", "method", models.CharField(blank=True, help_text="How it was trained; empty for a base.", max_length=32)),
        migrations.AddField("policyversion", "inputs", models.JSONField(blank=True, default=dict, help_text="What it was trained on: start, reward model, prompts, labels, seed.")),
        migrations.AddField("policyversion", "job", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="training.job")),
        migrations.AddField("round", "recipe", models.CharField(default="rlhf", max_length=32), preserve_default=False),
        migrations.AddField("round", "stages", models.JSONField(default=list, help_text="Stage names, in order (training/recipes.py).")),
        migrations.AlterField("round", "stage", models.CharField(max_length=32)),
        migrations.AlterField("job", "kind", models.CharField(choices=[("generate", "Generate comparisons"), ("train_reward", "Train reward model"), ("policy_update", "Update the policy"), ("evaluate", "Evaluate policies")], max_length=32)),
        migrations.AlterField("job", "params", models.JSONField(blank=True, default=dict, help_text="Everything the job needs, pinned at creation.")),
        migrations.AlterField("policyversion", "adapter_dir", models.CharField(blank=True, help_text="LoRA adapter on the base; empty for a base.", max_length=1000)),
        migrations.AlterField("policyversion", "config", models.JSONField(blank=True, default=dict, help_text="The method's config, as the job pinned it.")),
        migrations.AlterField("evaluationprompt", "position", models.PositiveIntegerField()),
        migrations.AlterField("evaluationprompt", "prompt", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="evaluations", to="labeling.prompt")),
        migrations.RunPython(create_default_run, migrations.RunPython.noop),
        migrations.RemoveField("round", "kind"),
        migrations.DeleteModel("LoopState"),
        migrations.RemoveConstraint("job", "one_pending_reward_training"),
        migrations.AddConstraint("job", models.UniqueConstraint(condition=models.Q(("kind", "train_reward"), ("status", "pending")), fields=("run",), name="one_pending_reward_training_per_run")),
        migrations.AddConstraint("evaluationprompt", models.UniqueConstraint(fields=("run", "prompt"), name="evaluation_prompt_once_per_run")),
        migrations.AddConstraint("evaluationprompt", models.UniqueConstraint(fields=("run", "position"), name="evaluation_position_once_per_run")),
        migrations.AlterField("policyversion", "run", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="versions", to="training.run")),
        migrations.AlterField("rewardmodelversion", "run", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="reward_models", to="training.run")),
        migrations.AlterField("round", "run", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="rounds", to="training.run")),
        migrations.AlterField("job", "run", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="jobs", to="training.run")),
        migrations.AlterField("evaluationprompt", "run", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="evaluation_prompts", to="training.run")),
    ]
