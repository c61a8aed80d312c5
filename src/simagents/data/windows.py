"""The one window slicer: episodes -> fixed-length training windows.

Episodes are concatenated into flat arrays once; a window is a gather of
``context_len`` consecutive steps of one episode, right-padded with a mask where
the episode ends first. Right padding keeps causal attention exact: valid tokens
never see padding. Episodes are drawn in proportion to their length and the
start uniformly over their steps, so every step is equally likely to be
trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simagents.data.episodes import Episode


class WindowSampler:
    """Samples windows of ``context_len`` steps from a fixed set of episodes."""

    def __init__(self, episodes: Sequence[Episode], context_len: int) -> None:
        if not episodes:
            raise ValueError("WindowSampler needs at least one episode")
        self.context_len = context_len
        self.lengths = np.array([len(e) for e in episodes], dtype=np.int64)  # (E,)
        self.step_offsets = np.concatenate(
            [[0], np.cumsum(self.lengths)[:-1]]
        )  # start of each episode's steps
        self.obs_offsets = self.step_offsets + np.arange(len(episodes))  # episodes have T+1 observations

        def flat(name: str) -> np.ndarray:
            return np.concatenate([getattr(e, name) for e in episodes])

        obs = flat("observations")
        acts = flat("actions")
        # Box spaces are flattened to vectors; Discrete stay scalar indices.
        self.observations = obs if obs.ndim == 1 else obs.reshape(len(obs), -1)
        self.actions = acts if acts.ndim == 1 else acts.reshape(len(acts), -1)
        self.rewards = flat("rewards").astype(np.float32)
        self.terminations = flat("terminations")
        self.interventions = flat("interventions")
        self.returns_to_go = np.concatenate([e.returns_to_go() for e in episodes])

    @property
    def n_steps(self) -> int:
        return int(self.lengths.sum())

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` windows; episodes weighted by length, start uniform within the episode."""
        episode = rng.choice(len(self.lengths), size=batch_size, p=self.lengths / self.lengths.sum())
        start = (rng.random(batch_size) * self.lengths[episode]).astype(np.int64)
        return self.windows(episode, start)

    def windows(self, episode: np.ndarray, start: np.ndarray) -> dict[str, np.ndarray]:
        """Windows of the given episodes from the given steps. Arrays are (B, K, ...)."""
        k = np.arange(self.context_len)
        step = start[:, None] + k[None, :]  # (B,K) step index within the episode
        mask = step < self.lengths[episode][:, None]
        step = np.where(mask, step, 0)  # padding reads step 0 and is then zeroed
        flat_step = self.step_offsets[episode][:, None] + step
        flat_obs = self.obs_offsets[episode][:, None] + step

        def gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
            out = values[index]
            return np.where(mask.reshape(*mask.shape, *([1] * (out.ndim - 2))), out, 0).astype(values.dtype)

        return {
            "observations": gather(self.observations, flat_obs),
            "next_observations": gather(self.observations, flat_obs + 1),
            "actions": gather(self.actions, flat_step),
            "rewards": gather(self.rewards, flat_step),
            "returns_to_go": gather(self.returns_to_go, flat_step),
            "terminations": gather(self.terminations, flat_step),
            "interventions": gather(self.interventions, flat_step),
            "timesteps": np.where(mask, step, 0),
            "mask": mask,
            "episode": episode,
            "start": start,
        }
