"""Per-step metrics out of a transformers/TRL trainer, for progress bars and curves."""

from __future__ import annotations

from collections.abc import Callable

StepReport = Callable[[int, int, dict], None]
"""on_step(step, total_steps, metrics)"""


def report_steps(history: list[dict], on_step: StepReport | None, name_of: Callable[[str], str]):
    """A TrainerCallback that appends each logged step, keys renamed by `name_of`, to
    `history` and hands it to `on_step`. Built on demand so importing this module (the
    web process does, through the services) does not import transformers."""
    from transformers import TrainerCallback

    class ReportSteps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            # The total is known before the first (slow) step: pages show 0/N, not 0/0.
            if on_step is not None:
                on_step(state.global_step, state.max_steps, {})

        def on_log(self, args, state, control, logs=None, **kwargs):
            entry = {"step": state.global_step, **{name_of(key): value for key, value in (logs or {}).items()}}
            history.append(entry)
            if on_step is not None:
                on_step(state.global_step, state.max_steps, entry)

    return ReportSteps()
