"""The one window slicer: episodes -> fixed-length training windows.

Episodes are concatenated into flat arrays once (:class:`~simagents.data.flat.FlatEpisodes`, in
memory or memory-mapped from a converted cache for data larger than memory); a window is a gather of
``context_len`` consecutive steps of one episode, right-padded with a mask where
the episode ends first. Right padding keeps causal attention exact: valid tokens
never see padding. Episodes are drawn in proportion to their length and the
start uniformly over their steps, so every step is equally likely to be
trained on.

Episodes of one block (blocked interventional data: one hidden draw of the world
replayed with each action) are drawn together, from the same step, into the same
batch. The hidden state then appears with every action in every batch, so the
gradient noise it causes cancels between the actions' values instead of drowning
a small causal effect (Newcomb's 1,000 beside 1,000,000) in batch-to-batch noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simagents.data.episodes import Episode
from simagents.data.flat import FlatEpisodes


class WindowSampler:
    """Samples windows of ``context_len`` steps from a fixed set of episodes."""

    def __init__(self, episodes: Sequence[Episode], context_len: int) -> None:
        if not episodes:
            raise ValueError("WindowSampler needs at least one episode")
        self._attach(FlatEpisodes.from_episodes(episodes), context_len, np.arange(len(episodes)))

    @classmethod
    def from_arrays(
        cls, flat: FlatEpisodes, context_len: int, episodes: np.ndarray | None = None
    ) -> WindowSampler:
        """A sampler over ``episodes`` (indices into ``flat``; all by default) of flat arrays, in
        memory or memory-mapped: windows are gathered from them as a batch needs them. Window
        ``episode`` indices count within ``episodes``."""
        chosen = np.arange(flat.n_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if not len(chosen):
            raise ValueError("WindowSampler needs at least one episode")
        sampler = cls.__new__(cls)
        sampler._attach(flat, context_len, chosen)
        return sampler

    def _attach(self, flat: FlatEpisodes, context_len: int, episodes: np.ndarray) -> None:
        self.context_len = context_len
        self.flat = flat
        self.episode_index = episodes  # (E,) this sampler's episodes in flat
        self.lengths = flat.lengths[episodes]  # (E,)
        self.step_offsets = flat.step_offsets[episodes]  # start of each episode's steps
        self.obs_offsets = self.step_offsets + episodes  # episodes have T+1 observations
        self.observations = flat.observations
        self.actions = flat.actions
        self.rewards = flat.rewards
        self.terminations = flat.terminations
        self.interventions = flat.interventions
        self.returns_to_go = flat.returns_to_go
        self.aux_targets = flat.aux_targets
        self.units = _sampling_units(flat.blocks[episodes])
        if self.units is not None:  # units are drawn in proportion to their steps
            unit_steps = np.where(self.units >= 0, self.lengths[self.units], 0).sum(axis=1)
            self.unit_p = unit_steps / unit_steps.sum()

    @property
    def n_steps(self) -> int:
        return int(self.lengths.sum())

    def sample(
        self, rng: np.random.Generator, batch_size: int, first_step_share: float = 0.0
    ) -> dict[str, np.ndarray]:
        """``batch_size`` windows; episodes weighted by length, start uniform within the episode, or
        with probability ``first_step_share`` at its first step.

        With blocks, whole blocks are drawn (weighted by their steps) from one start, until the
        batch is full; the last block drawn, if cut short, is masked out (no loss on it). ``draw`` (B,) numbers the
        draws: windows of one block share it, so per-window choices made downstream (the return
        dropout) can be made per block and keep the block's comparison paired.
        """
        if self.units is None:
            episode, start = self.draw(rng, batch_size, first_step_share)
            return {**self.windows(episode, start), "draw": np.arange(batch_size)}
        members = self.units  # (U, S) episode indices, -1 pads smaller units
        # Every unit holds at least one episode, so batch_size units always fill the batch.
        unit = rng.choice(len(members), size=batch_size, p=self.unit_p)
        unit_start = from_first_step(
            rng, (rng.random(batch_size) * self.lengths[members[unit, 0]]).astype(np.int64), first_step_share
        )
        episode = members[unit].reshape(-1)
        start = np.repeat(unit_start, members.shape[1])
        draw = np.repeat(np.arange(batch_size), members.shape[1])
        keep = episode >= 0
        episode, start, draw = episode[keep][:batch_size], start[keep][:batch_size], draw[keep][:batch_size]
        # Members of one block may differ in length: start no later than each one's last step.
        windows = self.windows(episode, np.minimum(start, self.lengths[episode] - 1))
        # A block cut short by the batch's end would be an unpaired sample: mask it out.
        last = draw == draw[-1]
        if last.sum() < (members[unit[draw[-1]]] >= 0).sum():
            windows["mask"][last] = False
        return {**windows, "draw": draw}

    def draw(
        self, rng: np.random.Generator, batch_size: int, first_step_share: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(episode, start) of ``batch_size`` windows without blocks, as :meth:`sample` draws them,
        before any is gathered."""
        episode = rng.choice(len(self.lengths), size=batch_size, p=self.lengths / self.lengths.sum())
        start = (rng.random(batch_size) * self.lengths[episode]).astype(np.int64)
        return episode, from_first_step(rng, start, first_step_share)

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
            "aux_targets": gather(self.aux_targets, flat_obs),
            "timesteps": np.where(mask, step, 0),
            "mask": mask,
            "episode": episode,
            "start": start,
        }


def from_first_step(rng: np.random.Generator, start: np.ndarray, share: float) -> np.ndarray:
    """``start`` with each entry set to 0 with probability ``share``; share 0 draws nothing, so
    the generator's stream (and every later draw) is as it was without the option."""
    if share == 0:
        return start
    return np.where(rng.random(start.shape[0]) < share, 0, start)


def _sampling_units(blocks: np.ndarray) -> np.ndarray | None:
    """Episode indices per sampling unit, (U, S) padded with -1: a block is one unit, every
    other episode its own. ``None`` when there are no blocks (plain per-episode sampling)."""
    if not np.any(blocks >= 0):
        return None
    block_ids, block_of = np.unique(blocks[blocks >= 0], return_inverse=True)
    size = np.bincount(block_of).max()
    units = np.full((len(block_ids) + int(np.sum(blocks < 0)), size), -1, dtype=np.int64)
    blocked = np.flatnonzero(blocks >= 0)
    order = np.argsort(block_of, kind="stable")
    rank = np.arange(len(blocked)) - np.searchsorted(block_of[order], block_of[order])
    units[block_of[order], rank] = blocked[order]
    units[len(block_ids) :, 0] = np.flatnonzero(blocks < 0)
    return units
