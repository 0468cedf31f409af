"""An experiment's results as the page reads them: per arm, the final gold reward and
the gold gain over the base with 95% intervals across seeds, the curves per round, and
the verdict (experiments/statistics.py does the maths)."""

from __future__ import annotations

from experiments import statistics
from experiments.models import Experiment
from prefloop.charts import LAYOUT, figure

# The legend under the axis title, not over it; the room for both, and for the right axis's numbers.
BELOW_THE_AXIS = {"legend": {"orientation": "h", "y": -0.3}, "height": 340}


def arm_order(experiment: Experiment) -> list[str]:
    seen: list[str] = []
    for arm in experiment.arm_runs.values_list("arm", flat=True).order_by("pk"):
        if arm not in seen:
            seen.append(arm)
    return seen


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def experiment_summary(experiment: Experiment) -> dict:
    """{"arms": rows, "curves": {arm: [per-round means]}, "verdict": str, "points": ...}.
    Only seeds that finished every round count towards the final numbers."""
    rounds = int(experiment.design.get("rounds", 0))
    by_arm: dict[str, list] = {arm: [] for arm in arm_order(experiment)}
    for arm_run in experiment.arm_runs.prefetch_related("results").order_by("pk"):
        by_arm[arm_run.arm].append((arm_run, {r.round_index: r for r in arm_run.results.all()}))
    rows, curves, finals = [], {}, {}
    for arm, seeds in by_arm.items():
        finished = [results for _, results in seeds if rounds in results and 0 in results]
        final_gold = [results[rounds].gold_reward for results in finished]
        gains = [results[rounds].gold_reward - results[0].gold_reward for results in finished]
        proxies = [results[rounds].proxy_reward for results in finished if results[rounds].proxy_reward is not None]
        kls = [results[rounds].kl for results in finished if results[rounds].kl is not None]
        finals[arm] = final_gold
        rows.append({
            "arm": arm, "schedule": seeds[0][0].schedule if seeds else "", "seeds": len(seeds),
            "finished": len(finished),
            "final_gold": statistics.t_interval(final_gold) if final_gold else None,
            "gain": statistics.t_interval(gains) if gains else None,
            "final_proxy": statistics.t_interval(proxies) if proxies else None,
            "kl": mean(kls),
            "labels": mean([results[rounds].labels for results in finished]),
            "compute_seconds": mean([results[rounds].compute_seconds for results in finished]),
        })
        curves[arm] = [
            {"round": index,
             "gold": statistics.t_interval([r[index].gold_reward for _, r in seeds if index in r])
             if any(index in r for _, r in seeds) else None,
             "proxy": mean([r[index].proxy_reward for _, r in seeds
                            if index in r and r[index].proxy_reward is not None])}
            for index in range(rounds + 1)
        ]
    points = [{"arm": arm_run.arm, "seed": arm_run.seed,
               "rounds": [(i, results[i].kl, results[i].gold_reward, results[i].proxy_reward)
                          for i in sorted(results) if results[i].kl is not None]}
              for seeds in by_arm.values() for arm_run, results in seeds]
    return {"arms": rows, "curves": curves, "points": points, "verdict": experiment_verdict(finals)}


def experiment_verdict(finals: dict[str, list[float]]) -> str:
    """Two arms: the first against the second. More: the best mean against the runner-up."""
    ready = {arm: values for arm, values in finals.items() if values}
    if len(ready) < 2:
        return "not enough finished seeds for a verdict yet"
    names = list(ready)
    if len(names) > 2:
        names = sorted(names, key=lambda arm: -sum(ready[arm]) / len(ready[arm]))[:2]
    first, second = names
    return statistics.verdict(first, ready[first], second, ready[second], what="final gold reward")


def error_bars(intervals: list) -> dict:
    return {"type": "data", "symmetric": False,
            "array": [(i.high - i.mean) if i and i.high is not None else 0 for i in intervals],
            "arrayminus": [(i.mean - i.low) if i and i.low is not None else 0 for i in intervals]}


def experiment_charts(summary: dict) -> dict:
    """Gold and proxy reward per round per arm (mean across seeds, gold with its 95%
    interval), and gold against KL for every arm and seed: the over-optimization curve."""
    per_round = []
    for arm, curve in summary["curves"].items():
        present = [point for point in curve if point["gold"] is not None]
        per_round.append({"type": "scatter", "mode": "lines+markers", "name": f"{arm}: gold",
                          "x": [p["round"] for p in present], "y": [p["gold"].mean for p in present],
                          "error_y": error_bars([p["gold"] for p in present])})
        proxy = [point for point in curve if point["proxy"] is not None]
        per_round.append({"type": "scatter", "mode": "lines+markers", "line": {"dash": "dot"},
                          "name": f"{arm}: proxy (its reward model)", "x": [p["round"] for p in proxy],
                          "y": [p["proxy"] for p in proxy], "yaxis": "y2"})
    versus_kl = [{"type": "scatter", "mode": "lines+markers", "name": f"{line['arm']} seed {line['seed']}",
                  "x": [kl for _, kl, _, _ in line["rounds"]], "y": [gold for _, _, gold, _ in line["rounds"]],
                  "text": [f"round {i}, proxy {proxy:.2f}" if proxy is not None else f"round {i}"
                           for i, _, _, proxy in line["rounds"]]}
                 for line in summary["points"]]
    return {
        "gold-per-round": figure("Gold (solid, 95% interval across seeds) and proxy reward (dotted) per round",
                                 per_round, xaxis={"title": {"text": "round"}, "dtick": 1},
                                 yaxis={"title": {"text": "gold reward"}},
                                 yaxis2={"title": {"text": "proxy reward"}, "overlaying": "y", "side": "right"},
                                 **BELOW_THE_AXIS, margin={**LAYOUT["margin"], "r": 70, "b": 80}),
        "gold-vs-kl": figure("Gold reward against KL to the base policy (over-optimization)", versus_kl,
                             xaxis={"title": {"text": "KL (nats per answer)"}},
                             yaxis={"title": {"text": "gold reward"}}, **BELOW_THE_AXIS,
                             margin={**LAYOUT["margin"], "b": 80}),
    }
