"""Comparisons belong to a run (the default run, for those made before runs existed);
a completion comes from a policy version or a named outside system; a label's origin
is human, simulated or imported instead of one boolean."""

import django.db.models.deletion
from django.db import migrations, models


def fill_runs_and_origins(apps, schema_editor):
    Comparison = apps.get_model("labeling", "Comparison")
    if Comparison.objects.exists():
        default = apps.get_model("training", "Run").objects.order_by("pk").first()
        Comparison.objects.update(run=default)
    Label = apps.get_model("labeling", "Label")
    Label.objects.filter(is_simulated=True).update(origin="simulated")


class Migration(migrations.Migration):

    dependencies = [
        ("labeling", "0001_initial"),
        ("training", "0005_runs"),
    ]

    operations = [
        migrations.AddField("comparison", "run", models.ForeignKey(null=True, help_text="The run whose reward models and methods learn from its labels.", on_delete=django.db.models.deletion.PROTECT, related_name="comparisons", to="training.run")),
        migrations.AddField("completion", "external_source", models.CharField(blank=True, help_text="Name of the outside system that wrote it.", max_length=200)),
        migrations.AlterField("completion", "policy_version", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="completions", to="training.policyversion")),
        migrations.AddField("label", "origin", models.CharField(choices=[("human", "A person"), ("simulated", "A simulated annotator"), ("imported", "Imported")], default="human", help_text="Statistics about people count human labels only.", max_length=16)),
        migrations.RunPython(fill_runs_and_origins, migrations.RunPython.noop),
        migrations.RemoveField("label", "is_simulated"),
        migrations.AlterField("comparison", "run", models.ForeignKey(help_text="The run whose reward models and methods learn from its labels.", on_delete=django.db.models.deletion.PROTECT, related_name="comparisons", to="training.run")),
        migrations.AddConstraint("completion", models.CheckConstraint(condition=models.Q(models.Q(("policy_version__isnull", False), ("external_source", "")), models.Q(("policy_version__isnull", True), models.Q(("external_source", ""), _negated=True)), _connector="OR"), name="completion_has_one_origin")),
    ]
