"""Episodes as flat step arrays: in memory, or memory-mapped from a converted on-disk cache.

The window sampler and the training statistics read episodes through one
:class:`FlatEpisodes`: each per-step array concatenated over the episodes (observations keep
their ``T + 1`` rows per episode), plus per-episode lengths, blocks and behaviour-policy
labels. Built from Episode objects it lives in memory; :func:`prepare_cache` gives the same
arrays memory-mapped from ``.npy`` files (``np.load(mmap_mode="r")``), so a dataset larger
than memory trains with only the pages its batches touch in RAM.

A cache folder, converted from Minari's HDF5 one chunk of episodes at a time::

    CACHE/manifest.json   format, each source's file sizes, mtimes and metadata hash, labels, arrays
    CACHE/<array>.npy     one file per array of FlatEpisodes

It is built in a hidden folder beside its place and renamed into it, so a crash leaves the old
cache or the new one, never half of one. A cache whose manifest no longer matches its sources
(a dataset rewritten since) is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from simagents.data.episodes import Episode
from simagents.data.minari_io import Dataset, dataset_header, stream_dataset
from simagents.errors import SimagentsError
from simagents.io import LOCK_NAME, atomic_write_json, hold_lock, read_json

CACHE_FORMAT = 2  # 2: aux_targets
MANIFEST = "manifest.json"
CHUNK_STEPS = 1 << 16
"""Steps converted (and statistics read) per chunk: bounds the memory either needs."""


@dataclass(frozen=True)
class FlatEpisodes:
    """Episodes as flat arrays. ``E`` episodes, ``N`` steps in all."""

    lengths: np.ndarray  # (E,) int64 steps per episode
    blocks: np.ndarray  # (E,) int64 block id, -1 outside blocks
    policy_ids: np.ndarray  # (E,) int64 index into policies
    episode_returns: np.ndarray  # (E,) float64 undiscounted return
    observations: np.ndarray  # (N + E,) or (N + E, D): each episode's T + 1 rows, Box flattened
    actions: np.ndarray  # (N,) or (N, A), Box flattened
    rewards: np.ndarray  # (N,) float32
    terminations: np.ndarray  # (N,) bool
    interventions: np.ndarray  # (N,) bool
    returns_to_go: np.ndarray  # (N,) float32, as Episode.returns_to_go
    aux_targets: np.ndarray  # (N + E, A) float32, as Episode.aux_targets; A = 0 without
    policies: tuple[str, ...] = ("",)  # behaviour-policy labels, "" for none

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode]) -> FlatEpisodes:
        """Concatenate episodes in memory."""
        policies = tuple(dict.fromkeys(e.policy for e in episodes))
        index = {name: i for i, name in enumerate(policies)}
        return cls._concat(episodes, index, policies)

    @classmethod
    def _concat(
        cls, episodes: Sequence[Episode], index: dict[str, int], policies: tuple[str, ...]
    ) -> FlatEpisodes:
        def flat(name: str) -> np.ndarray:
            values = np.concatenate([getattr(e, name) for e in episodes])
            # Box spaces are flattened to vectors; Discrete stay scalar indices.
            return values if values.ndim == 1 else values.reshape(len(values), -1)

        widths = {e.n_aux_targets for e in episodes}
        if len(widths) > 1:
            raise SimagentsError(
                f"episodes carry different numbers of auxiliary targets ({sorted(widths)}); give every "
                "episode the same aux_targets, or none"
            )
        return cls(
            lengths=np.array([len(e) for e in episodes], dtype=np.int64),
            blocks=np.array([e.block for e in episodes], dtype=np.int64),
            policy_ids=np.array([index[e.policy] for e in episodes], dtype=np.int64),
            episode_returns=np.array([e.episode_return for e in episodes], dtype=np.float64),
            observations=flat("observations"),
            actions=flat("actions"),
            rewards=flat("rewards").astype(np.float32),
            terminations=flat("terminations"),
            interventions=flat("interventions"),
            returns_to_go=np.concatenate([e.returns_to_go() for e in episodes]),
            aux_targets=np.concatenate([e.aux_targets for e in episodes]).astype(np.float32),
            policies=policies,
        )

    @property
    def n_episodes(self) -> int:
        return len(self.lengths)

    @property
    def n_steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def step_offsets(self) -> np.ndarray:
        """(E,) int64 row of each episode's first step in the step arrays."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def rows(self, episodes: np.ndarray, observations: bool = False) -> np.ndarray:
        """Boolean mask over the step rows (or observation rows) that belong to ``episodes``."""
        chosen = np.zeros(self.n_episodes, dtype=bool)
        chosen[episodes] = True
        return np.repeat(chosen, self.lengths + 1 if observations else self.lengths)


def masked_chunks(values: np.ndarray, mask: np.ndarray, chunk: int | None = None) -> Iterator[np.ndarray]:
    """The rows of ``values`` where ``mask`` holds, in order, a chunk of rows at a time: a statistic
    over a memory-mapped array then never needs the whole array in memory."""
    chunk = chunk or CHUNK_STEPS
    for lo in range(0, len(values), chunk):
        part = np.asarray(values[lo : lo + chunk])[mask[lo : lo + chunk]]
        if len(part):
            yield part


# --------------------------------------------------------------------------- the on-disk cache


def prepare_cache(refs: Sequence[str], folder: Path, build: bool = True) -> tuple[Dataset, FlatEpisodes]:
    """The datasets ``refs`` (mixed in order, as training mixes them) memory-mapped from the cache in
    ``folder``; converted first if the cache is missing or stale, unless ``build`` is False (then a
    stale cache is an error). Returns the first dataset's description (spaces, env; no episodes)."""
    if not refs:
        raise SimagentsError(
            "train: no dataset given; pass --data PATH (a folder written by `simagents collect`)"
        )
    folder = Path(folder).absolute()
    headers = [dataset_header(ref) for ref in refs]  # a fresh cache needs no scan of the episodes
    first = headers[0]
    for ref, other in zip(refs[1:], headers[1:], strict=True):
        if other.observation_space != first.observation_space or other.action_space != first.action_space:
            raise SimagentsError(
                f"{ref}: spaces {other.observation_space} / {other.action_space} differ from {refs[0]}'s "
                f"{first.observation_space} / {first.action_space}; mix only datasets of the same env"
            )
    sources = [_source_fingerprint(dataset.path) for dataset in headers]
    flat = _open_cache(folder, sources)
    if flat is None:
        if not build:
            raise SimagentsError(f"{folder}: the data cache is missing or out of date; let rank 0 build it")
        lock = folder.parent / f".{folder.name}{LOCK_NAME}"
        with hold_lock(folder, "data cache", lock_file=lock):
            # Leftovers of a conversion killed midway (no one else converts while we hold the lock).
            for stale in [
                *folder.parent.glob(f".{folder.name}.partial-*"),
                *folder.parent.glob(f".{folder.name}.old-*"),
            ]:
                shutil.rmtree(stale, ignore_errors=True)
            streams = [stream_dataset(ref)[1:] for ref in refs]
            _build_cache(folder, sources, streams)
        flat = _open_cache(folder, sources)
        if flat is None:  # only if the files changed under us while converting
            raise SimagentsError(
                f"{folder}: the data cache does not match its datasets after converting them"
            )
    return first, flat


def _source_fingerprint(path: Path | None) -> dict[str, Any]:
    # The HDF5 file is too big to hash on every start; its size and mtime, and metadata.json's hash
    # (which holds the episode and step counts), tell a rewritten dataset from the converted one.
    assert path is not None
    main, metadata = path / "data" / "main_data.hdf5", path / "data" / "metadata.json"
    stat = main.stat()
    return {
        "path": str(path),
        "main_size": stat.st_size,
        "main_mtime_ns": stat.st_mtime_ns,
        "metadata_sha256": hashlib.sha256(metadata.read_bytes()).hexdigest(),
    }


def _open_cache(folder: Path, sources: list[dict[str, Any]]) -> FlatEpisodes | None:
    """The cache's memmapped arrays, or None if it is missing, damaged or made from other data."""
    try:
        manifest = read_json(folder / MANIFEST, "data cache manifest")
    except SimagentsError:
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        return None
    if manifest.get("sources") != sources:
        return None
    arrays: dict[str, np.ndarray] = {}
    for f in fields(FlatEpisodes):
        if f.name == "policies":
            continue
        try:
            array = np.load(folder / f"{f.name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if [list(array.shape), array.dtype.str] != manifest.get("arrays", {}).get(f.name):
            return None
        arrays[f.name] = array
    policies = manifest.get("policies")
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        return None
    # Per-episode arrays are small and read on every batch: keep them in memory.
    small = {
        name: np.array(arrays.pop(name)) for name in ("lengths", "blocks", "policy_ids", "episode_returns")
    }
    return FlatEpisodes(**small, **arrays, policies=tuple(policies))


def _build_cache(
    folder: Path,
    sources: list[dict[str, Any]],
    streams: list[tuple[np.ndarray, Iterator[Episode]]],
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        manifest = _convert(staging, streams)
        atomic_write_json(staging / MANIFEST, {"format": CACHE_FORMAT, "sources": sources, **manifest})
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert(staging: Path, streams: list[tuple[np.ndarray, Iterator[Episode]]]) -> dict[str, Any]:
    """Write every array of FlatEpisodes for the streamed episodes, one chunk of episodes at a time."""
    n_episodes = sum(len(lengths) for lengths, _ in streams)
    n_steps = int(sum(int(lengths.sum()) for lengths, _ in streams))
    policy_index: dict[str, int] = {}
    files: dict[str, np.memmap[Any, np.dtype[Any]]] = {}
    cursor = {"episode": 0, "step": 0, "obs": 0}
    next_block = 0  # block ids are per dataset: shift them so that two datasets' blocks stay apart

    def flush(chunk: list[Episode]) -> None:
        for e in chunk:
            policy_index.setdefault(e.policy, len(policy_index))
        part = FlatEpisodes._concat(chunk, policy_index, ())
        rows = {"episode": len(chunk), "step": part.n_steps, "obs": part.n_steps + len(chunk)}
        if not files:  # dtypes and row shapes come from the data, as in memory
            for f in fields(FlatEpisodes):
                if f.name != "policies":
                    values = getattr(part, f.name)
                    total = {"episode": n_episodes, "step": n_steps, "obs": n_steps + n_episodes}[
                        _axis(f.name)
                    ]
                    files[f.name] = np.lib.format.open_memmap(
                        staging / f"{f.name}.npy",
                        mode="w+",
                        dtype=values.dtype,
                        shape=(total, *values.shape[1:]),
                    )
        for name, out in files.items():
            axis = _axis(name)
            values = getattr(part, name)
            if values.shape[1:] != out.shape[1:]:
                raise SimagentsError(
                    f"episode {cursor['episode']}: {name} rows of shape {values.shape[1:]} differ from the "
                    f"first episode's {out.shape[1:]}; every episode must have the same spaces (and auxiliary targets)"
                )
            out[cursor[axis] : cursor[axis] + rows[axis]] = values
        for axis in cursor:
            cursor[axis] += rows[axis]

    for lengths, episodes in streams:
        chunk: list[Episode] = []
        steps = 0
        top = -1
        for i, episode in enumerate(episodes):
            if len(episode) != lengths[i]:
                raise SimagentsError(f"episode {i}: read {len(episode)} steps, the file lists {lengths[i]}")
            if episode.block >= 0:
                top = max(top, episode.block + next_block)
                episode = replace(episode, block=episode.block + next_block)
            chunk.append(episode)
            steps += len(episode)
            if steps >= CHUNK_STEPS:
                flush(chunk)
                chunk, steps = [], 0
        if chunk:
            flush(chunk)
        next_block = top + 1 if top >= 0 else next_block
    for out in files.values():
        out.flush()
    arrays = {name: [list(out.shape), out.dtype.str] for name, out in files.items()}
    files.clear()  # closes the memmaps before the folder is renamed
    return {"policies": list(policy_index), "arrays": arrays, "n_episodes": n_episodes, "n_steps": n_steps}


def _axis(name: str) -> str:
    if name in ("lengths", "blocks", "policy_ids", "episode_returns"):
        return "episode"
    return "obs" if name in ("observations", "aux_targets") else "step"


def cache_bytes(flat: FlatEpisodes) -> int:
    """Bytes of all the arrays: what the in-memory path holds at least."""
    return sum(getattr(flat, f.name).nbytes for f in fields(FlatEpisodes) if f.name != "policies")
