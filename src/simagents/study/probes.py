"""Linear probes (route 3): what can be read off a simulator's hidden states with a linear map?

A probe is multinomial logistic regression (plain torch, L-BFGS, L2 penalty) fitted on one
set of steps and scored on another, split by episode so that no game is in both. Beside
the probe on the simulator's hidden states, the same probe on the raw observation says how
much of the answer the current observation alone gives away, and the test set's most
frequent class gives chance.

:func:`probe_features` reads, for every step of some episodes, the simulator's final hidden
state at the return token (the policy's input) with the return and the label left
*unknown*, as imitation acts: whatever the simulator knows there about who is playing or how
the episode will end, it inferred from the history. The raw features are the observation
``x`` and ``x**2`` (for cells of -1/0/+1, a one-hot code of each cell's three values; for
Connect Four's 0/1 planes, the stones and the immediate tactics the observation carries).

Nothing here knows a testbed: the targets (e.g. each episode's behaviour-policy label, its
final outcome) are the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from simagents.data.episodes import Episode
from simagents.model import Simulator


@dataclass
class ProbeFeatures:
    """Per step of some episodes (N steps in all)."""

    hidden: np.ndarray  # (N,d) the simulator's hidden state at R_t, return and label unknown
    raw: np.ndarray  # (N,2*obs_dim) the observation o_t and its square
    episode: np.ndarray  # (N,) index of the step's episode in the list given


@torch.no_grad()
def probe_features(simulator: Simulator, episodes: Sequence[Episode]) -> ProbeFeatures:
    """Hidden states and raw features of every step of ``episodes``.

    Each episode runs in windows of ``context_len`` steps from its start (a longer one in
    consecutive windows), through the training forward pass: one batch per episode length."""
    simulator.eval()
    K = simulator.cfg.context_len
    hidden, raw, index = [], [], []
    for i, episode in enumerate(episodes):
        T = len(episode)
        for start in range(0, T, K):
            n = min(K, T - start)
            steps = slice(start, start + n)
            obs = torch.as_tensor(episode.observations[steps])
            batch = {
                "observations": obs[None],
                "returns_to_go": torch.zeros(1, n),
                "return_known": torch.tensor([False]),
                "actions": torch.as_tensor(episode.actions[steps])[None],
                "interventions": torch.as_tensor(episode.interventions[steps])[None],
                "rewards": torch.as_tensor(episode.rewards[steps], dtype=torch.float32)[None],
                "timesteps": torch.arange(start, start + n)[None],
            }
            hidden.append(simulator(batch)["return"][0].numpy())  # (n,d)
            flat = episode.observations[steps].reshape(n, -1).astype(np.float32)
            raw.append(np.concatenate([flat, flat**2], axis=1))
            index.append(np.full(n, i))
    return ProbeFeatures(np.concatenate(hidden), np.concatenate(raw), np.concatenate(index))


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> dict[str, float]:
    """Fit a linear probe (multinomial logistic regression) and score it.

    ``x`` (N,F) features, ``y`` (N,) integer classes. Features are standardised with the
    training set's mean and deviation. Returns ``{"accuracy", "train_accuracy", "chance"}``:
    ``chance`` is the accuracy of always answering the training set's most frequent class."""
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("a probe needs training and test examples")
    classes = int(max(y_train.max(), y_test.max())) + 1
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xs = [torch.as_tensor((x - mean) / std, dtype=torch.float64) for x in (x_train, x_test)]
    ys = [torch.as_tensor(y, dtype=torch.long) for y in (y_train, y_test)]
    weight = torch.zeros(xs[0].shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(xs[0] @ weight + bias, ys[0]) + l2 * (weight**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]  # torch leaves LBFGS.step unannotated
    with torch.no_grad():
        accuracy = [
            float(((x @ weight + bias).argmax(-1) == y).double().mean()) for x, y in zip(xs, ys, strict=True)
        ]
    majority = np.bincount(y_train, minlength=classes).argmax()
    return {
        "accuracy": accuracy[1],
        "train_accuracy": accuracy[0],
        "chance": float(np.mean(y_test == majority)),
    }


def probe_report(
    features: ProbeFeatures, targets: np.ndarray, test_fraction: float = 0.3, seed: int = 0, l2: float = 1e-3
) -> dict[str, float]:
    """Probe ``targets`` (N,) integer classes per step from the hidden states and from the raw
    features, split by episode (a seeded ``test_fraction`` of the episodes for testing).

    Returns ``{"hidden", "raw", "chance", "hidden_train", "raw_train", "train_steps", "test_steps"}``
    (accuracies on the test steps, and on the training steps for the ``_train`` entries)."""
    episodes = np.unique(features.episode)
    order = np.random.default_rng([seed, 3]).permutation(episodes)
    test_episodes = order[: max(1, round(test_fraction * len(order)))]
    test = np.isin(features.episode, test_episodes)
    out: dict[str, float] = {}
    for name, x in (("hidden", features.hidden), ("raw", features.raw)):
        scores = fit_probe(x[~test], targets[~test], x[test], targets[test], l2=l2)
        out[name] = scores["accuracy"]
        out[f"{name}_train"] = scores["train_accuracy"]
        out["chance"] = scores["chance"]
    out["train_steps"], out["test_steps"] = float(np.sum(~test)), float(np.sum(test))
    return out
