"""The in-memory episode contract every other module reads.

An :class:`Episode` mirrors Minari's ``EpisodeData``: ``T`` steps, ``T + 1``
observations (the last one is the observation after the final step), and
terminations kept apart from truncations. Optional extras carry what the
simulator needs for causality, for labelling players and for auxiliary training signal:

- ``interventions``: per-step flags, ``True`` where the action was the acting
  agent's own choice, drawn independently of any hidden state (counterfactual
  teaching). Such actions are not evidence and get no action loss.
- ``policy``: the label of the behaviour policy that produced the episode.
- ``block``: episodes with the same block id (``>= 0``) replay one hidden draw of the world
  with different actions (blocked randomisation of interventional data). The trainer draws a
  block's episodes into the same batch, so the hidden state's noise cancels between actions.
- ``aux_targets``: per-observation facts in [0, 1] (``(T + 1, A)``) that the simulator learns to
  predict from the state its policy reads and never reads as input: auxiliary tasks, as KataGo's
  ownership targets, whose labels the data's maker knows and the agent does not (Connect Four's
  engine proofs of which moves lose). ``A`` is 0 (none) by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from simagents.errors import SimagentsError

# The default of Episode.interventions until __post_init__ sizes it: "no step was an intervention".
_NO_INTERVENTIONS = np.zeros(0, dtype=bool)
# The default of Episode.aux_targets until __post_init__ sizes it: no auxiliary targets.
_NO_AUX_TARGETS = np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Episode:
    """One episode. Shapes: ``T`` steps, ``obs_shape`` and ``act_shape`` from the spaces."""

    observations: np.ndarray  # (T+1, *obs_shape); int64 for Discrete, float32 for Box
    actions: np.ndarray  # (T, *act_shape); int64 for Discrete, float32 for Box
    rewards: np.ndarray  # (T,) float32
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    interventions: np.ndarray = field(default_factory=lambda: _NO_INTERVENTIONS)  # (T,) bool
    policy: str = ""
    seed: int | None = None
    block: int = -1  # -1: not part of a block
    aux_targets: np.ndarray = field(default_factory=lambda: _NO_AUX_TARGETS)  # (T+1, A) float32

    def __post_init__(self) -> None:
        n = len(self.rewards)
        # None: callers without type checking may still pass it for "no interventions".
        if self.interventions is None or self.interventions is _NO_INTERVENTIONS:
            object.__setattr__(self, "interventions", np.zeros(n, dtype=bool))
        if self.aux_targets is None or self.aux_targets is _NO_AUX_TARGETS:
            object.__setattr__(self, "aux_targets", np.zeros((n + 1, 0), dtype=np.float32))

    @property
    def n_aux_targets(self) -> int:
        """A: auxiliary targets per observation (0: none)."""
        return int(np.shape(self.aux_targets)[-1]) if np.ndim(self.aux_targets) == 2 else 0

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    def returns_to_go(self) -> np.ndarray:
        """Undiscounted sum of this and all later rewards, per step: (T,) float32."""
        return np.cumsum(self.rewards[::-1], dtype=np.float64)[::-1].astype(np.float32)

    def validate(
        self,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        where: str = "episode",
    ) -> None:
        """Raise :class:`SimagentsError` naming ``where`` if this episode breaks the contract."""
        n = len(self.rewards)
        if n == 0:
            raise SimagentsError(f"{where}: episode has no steps; drop empty episodes from the dataset")
        expected = {
            "observations": (n + 1, *space_shape(observation_space)),
            "actions": (n, *space_shape(action_space)),
            "rewards": (n,),
            "terminations": (n,),
            "truncations": (n,),
            "interventions": (n,),
        }
        expected["aux_targets"] = (n + 1, self.n_aux_targets)
        for name, shape in expected.items():
            got = np.shape(getattr(self, name))
            if got != shape:
                raise SimagentsError(
                    f"{where}: {name} has shape {got}, expected {shape} for a {n}-step episode "
                    f"(observation space {observation_space}, action space {action_space})"
                )
        for name in ("observations", "actions", "rewards"):
            values = np.asarray(getattr(self, name))
            if values.dtype.kind not in "biuf":
                raise SimagentsError(f"{where}: {name} has dtype {values.dtype}; expected numbers")
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                raise SimagentsError(
                    f"{where}: {name} contains NaN or inf; clean or drop the episode before training"
                )
        targets = np.asarray(self.aux_targets)
        if targets.size and (targets.dtype.kind not in "biuf" or not np.all((targets >= 0) & (targets <= 1))):
            raise SimagentsError(
                f"{where}: aux_targets must be numbers in [0, 1] (probabilities or 0/1 facts); "
                "rescale them or drop the field"
            )
        if np.any(self.terminations[:-1]) or np.any(self.truncations[:-1]):
            raise SimagentsError(
                f"{where}: an episode ends (termination or truncation) before its last step; "
                "split it into separate episodes"
            )
        for name, space in (("observations", observation_space), ("actions", action_space)):
            values = np.asarray(getattr(self, name))
            if isinstance(space, gym.spaces.Discrete):
                if values.dtype.kind == "f" and not np.all(values == np.round(values)):
                    raise SimagentsError(f"{where}: {name} are not integers but the space is {space}")
                lo, hi = int(space.start), int(space.start + space.n - 1)
                if values.min() < lo or values.max() > hi:
                    raise SimagentsError(
                        f"{where}: {name} range [{values.min()}, {values.max()}] is outside {space}; "
                        "check that the dataset was made with this env"
                    )


def space_shape(space: gym.Space[Any]) -> tuple[int, ...]:
    """Per-step array shape of a supported space; other spaces are an error."""
    if isinstance(space, gym.spaces.Discrete):
        return ()
    if isinstance(space, gym.spaces.Box):
        return tuple(space.shape)
    raise SimagentsError(
        f"space {space} is not supported yet; use Discrete or Box observations and actions "
        "(flatten Dict/Tuple spaces with gymnasium.wrappers.FlattenObservation)"
    )


def episode_from_arrays(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminations: np.ndarray,
    truncations: np.ndarray,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
    interventions: np.ndarray | None = None,
    policy: str = "",
    seed: int | None = None,
    block: int = -1,
    aux_targets: np.ndarray | None = None,
) -> Episode:
    """Build an Episode with the contract's dtypes (int64 for Discrete, float32 for Box)."""

    def cast(values: np.ndarray, space: gym.Space[Any]) -> np.ndarray:
        values = np.asarray(values)
        if isinstance(space, gym.spaces.Discrete):
            return values.astype(np.int64) if values.dtype.kind in "biu" else values
        return values.astype(np.float32) if values.dtype.kind in "biuf" else values

    return Episode(
        observations=cast(observations, observation_space),
        actions=cast(actions, action_space),
        rewards=np.asarray(rewards, dtype=np.float32)
        if np.asarray(rewards).dtype.kind in "biuf"
        else np.asarray(rewards),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
        interventions=_NO_INTERVENTIONS if interventions is None else np.asarray(interventions, dtype=bool),
        policy=policy,
        seed=seed,
        block=int(block),
        aux_targets=_NO_AUX_TARGETS if aux_targets is None else np.asarray(aux_targets, dtype=np.float32),
    )
