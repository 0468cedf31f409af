"""Where a PPO round's time goes: runs one child of scripts/bench_ppo.py (`prefloop` or
`trl`, with that script's options) with timers around TRL's phases (generation, the
reference/value/reward forwards of the rollout, and the PPO epochs' forward, backward
and optimizer step), and prints seconds per phase.

    .venv/bin/python scripts/profile_ppo.py prefloop --episodes 16
"""

from __future__ import annotations

import collections
import functools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

SECONDS: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()


def timed(phase, function):
    """`phase(*args)` names the phase of a call (one function serves several)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        name, started = phase(*args), time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - started
            CALLS[name] += 1

    return wrapper


def main() -> None:
    import accelerate
    import torch
    import trl.experimental.ppo.ppo_trainer as ppo

    ppo.batch_generation = timed(lambda *a: "rollout: generate", ppo.batch_generation)
    ppo.forward = timed(lambda model, *a: "epochs: forward (policy and value)"
                        if isinstance(model, ppo.PolicyAndValueWrapper) else "rollout: reference forward", ppo.forward)
    ppo.get_reward = timed(lambda *a: "rollout: value and reward forwards", ppo.get_reward)
    accelerate.Accelerator.backward = timed(lambda *a: "epochs: backward", accelerate.Accelerator.backward)
    torch.optim.AdamW.step = timed(lambda *a: "epochs: optimizer step", torch.optim.AdamW.step)

    import bench_ppo

    sys.argv = ["bench_ppo.py", "--child", *sys.argv[1:]]
    started = time.perf_counter()
    bench_ppo.main()
    total = time.perf_counter() - started
    for name, seconds in sorted(SECONDS.items(), key=lambda item: -item[1]):
        print(f"{name:40s} {seconds:7.1f} s  ({CALLS[name]} calls)")
    print(f"{'whole child process':40s} {total:7.1f} s")


if __name__ == "__main__":
    main()
