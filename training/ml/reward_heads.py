"""Linear Bradley–Terry heads on a reward model's features: the head a refit publishes
(training/ml/reward_refit.py) and the bootstrap ensemble that ranks comparisons for
active query selection. Plain torch; the features come from training/ml/reward_features.py."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fit_head(differences: torch.Tensor, init: torch.Tensor, steps: int = 100, l2: float = 1e-3,
             margins: torch.Tensor | None = None) -> torch.Tensor:
    """A Bradley–Terry linear head w (hidden,) on the pairs' feature differences
    f_chosen − f_rejected (n, hidden): minimizes −log σ(w·d − margin), starting from
    and pulled towards `init` (the trained head), so few pairs cannot drag it far. The
    problem is convex, so L-BFGS solves it in a few dozen iterations whatever the
    feature scale (Adam's fixed step could not move a large head far enough)."""
    differences = differences.float()
    anchor = init.float()
    size = anchor.norm().item() ** 2
    weight = l2 / size if size > 1e-6 else l2  # the pull, relative to the head's size
    head = anchor.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([head], max_iter=steps, line_search_fn="strong_wolfe")
    offset = margins if margins is not None else 0.0

    def loss_and_gradient():
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-(differences @ head - offset)).mean() \
            + weight * (head - anchor).square().sum()
        loss.backward()
        return loss

    optimizer.step(loss_and_gradient)
    return head.detach()


def fit_bootstrap_heads(
    chosen: torch.Tensor, rejected: torch.Tensor, init: torch.Tensor, members: int, seed: int,
    steps: int = 100, l2: float = 1e-3,
) -> torch.Tensor:
    """Ensemble members for query selection: Bradley–Terry linear heads w_m, each fit on
    a bootstrap resample of the pairs' feature differences, starting from the trained
    head `init` (hidden,). Returns (members, hidden). Sharing the backbone makes the
    ensemble cost one forward pass per completion; the spread of the heads measures how
    unsure the reward model's last layer is about a comparison."""
    differences = (chosen - rejected).float()  # (n, hidden)
    generator = torch.Generator().manual_seed(seed)
    heads = []
    for _ in range(members):
        sample = differences[torch.randint(len(differences), (len(differences),), generator=generator)]
        heads.append(fit_head(sample, init, steps, l2))
    return torch.stack(heads)


def ensemble_disagreement(heads: torch.Tensor, features: Sequence[torch.Tensor]) -> float:
    """How much the members disagree on a comparison of completions with these features:
    the standard deviation across members of P(a beats b), averaged over all pairs."""
    spreads = []
    for i in range(len(features)):
        for j in range(i + 1, len(features)):
            probabilities = torch.sigmoid(heads @ (features[i] - features[j]))  # (members,)
            spreads.append(probabilities.std(unbiased=False).item())
    return sum(spreads) / len(spreads)
