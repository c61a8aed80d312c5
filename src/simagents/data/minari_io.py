"""Read and write Minari datasets as lists of :class:`~simagents.data.episodes.Episode`.

On disk a dataset is an ordinary Minari 0.5 HDF5 dataset; ``path`` always means the
dataset folder, the one that contains ``data/``::

    <path>/data/main_data.hdf5   episodes, written by minari
    <path>/data/metadata.json    minari's metadata, plus our "simagents" key

What simagents adds, all inside files minari itself keeps (so ``minari`` tools that copy
or upload a dataset keep it too):

- per step, in each episode's infos (length ``T + 1`` like every Minari info: index 0 is
  the reset info, index ``t + 1`` belongs to the action at step ``t``):
  ``infos/intervention`` (bool; index 0 is False), ``infos/policy_id`` (int64, the same
  value on every step) and ``infos/block`` (int64, the episode's block id on every step, -1
  outside blocked interventional data; absent in older datasets, read as -1);
- in ``metadata.json`` under ``"simagents"``: ``{"format": 1, "policies": [names...],
  "env_id": ..., "env_kwargs": {...}}``; ``policy_id`` indexes ``policies``.

A dataset without the ``"simagents"`` key (made with minari directly) loads with policy
label ``""`` and no interventions. Each episode's ``seed`` is minari's per-episode seed.

Every problem a user can cause raises :class:`SimagentsError` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from simagents.data.episodes import Episode, episode_from_arrays, space_shape
from simagents.errors import SimagentsError
from simagents.io import LOCK_NAME, check_can_write, hold_lock

FORMAT = 1
META_KEY = "simagents"
_REQUIRED_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
# Same grammar as minari's dataset ids: (namespace/)name(-vN).
_DATASET_ID = re.compile(
    r"^(?:(?P<namespace>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)(?:-v(?P<version>\d+))?$"
)


@dataclass(frozen=True)
class Dataset:
    """Episodes plus what is needed to interpret them and to re-create their env."""

    episodes: list[Episode]
    observation_space: gym.Space[Any]
    action_space: gym.Space[Any]
    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def n_steps(self) -> int:
        return sum(len(ep) for ep in self.episodes)

    @property
    def policies(self) -> list[str]:
        """Sorted unique behaviour-policy labels (``""`` for unlabelled episodes)."""
        return sorted({ep.policy for ep in self.episodes})

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode, (n_episodes,) float64."""
        return np.array([ep.episode_return for ep in self.episodes], dtype=np.float64)


# --------------------------------------------------------------------------- helpers


def minari_root() -> Path:
    """The local Minari root: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets`` (not created)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".minari" / "datasets"


def register_simagents_envs() -> None:
    """Import ``simagents.envs`` if it exists, so ``simagents/...`` env ids are registered."""
    import importlib

    try:
        importlib.import_module("simagents.envs")
    except ModuleNotFoundError as e:
        if e.name != "simagents.envs":
            raise


@contextmanager
def _minari_root_at(root: Path) -> Iterator[None]:
    # minari only writes under MINARI_DATASETS_PATH; point it at our staging folder for the call.
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _dataset_id_for(path: Path) -> str:
    """A minari id for ``path``: relative to the Minari root if it lies there, else simagents/<name>."""
    try:
        rel = path.resolve().relative_to(minari_root().resolve()).as_posix()
        match = _DATASET_ID.fullmatch(rel)
        if match and match["version"] is not None:
            return rel
    except ValueError:
        pass
    name = re.sub(r"[^-\w]+", "_", path.name).strip("_-") or "dataset"
    if not re.search(r"-v\d+$", name):
        name += "-v0"
    return f"simagents/{name}"


def _env_for_spec(env_id: str | None, env_kwargs: dict[str, Any]) -> gym.Env | None:
    """The env to record in minari's metadata (so ``recover_environment`` works), if it can be made."""
    if env_id is None:
        return None
    register_simagents_envs()
    try:
        gym.spec(env_id)
        return gym.make(env_id, **env_kwargs)
    except Exception:  # an env we cannot make is still recorded by id in our metadata
        return None


# --------------------------------------------------------------------------- save


def save_dataset(
    episodes: Sequence[Episode],
    path: str | Path,
    *,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    description: str | None = None,
    algorithm_name: str | None = None,
) -> Path:
    """Write ``episodes`` as a Minari dataset in the folder ``path`` and return it.

    The dataset is built in a hidden staging folder beside ``path`` and renamed into place
    at the end, so an interrupted save leaves nothing at ``path``. A second process saving to
    the same ``path`` at the same time is refused (see :func:`dataset_lock`).
    """
    with dataset_lock(path):
        return _save_dataset(
            episodes,
            check_can_write(path),
            observation_space=observation_space,
            action_space=action_space,
            env_id=env_id,
            env_kwargs=env_kwargs,
            description=description,
            algorithm_name=algorithm_name,
        )


def dataset_lock(path: str | Path) -> AbstractContextManager[Path]:
    """The lock a dataset writer holds on ``path`` (a context manager).

    The lock file lies beside the folder, not in it, because the finished dataset is renamed
    into ``path`` and that needs ``path`` empty. Hold it around collection too, so that a second
    collection to the same ``--out`` is refused at the start rather than at the end.
    """
    path = Path(path).expanduser().absolute()
    return hold_lock(path, "dataset", lock_file=path.parent / f".{path.name}{LOCK_NAME}")


def _save_dataset(
    episodes: Sequence[Episode],
    path: Path,
    *,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
    env_id: str | None,
    env_kwargs: dict[str, Any] | None,
    description: str | None,
    algorithm_name: str | None,
) -> Path:
    env_kwargs = dict(env_kwargs or {})
    for what, space in (("observation", observation_space), ("action", action_space)):
        try:
            space_shape(space)
        except SimagentsError as e:
            raise SimagentsError(f"cannot save {path}: {what} {e}") from None
    if not episodes:
        raise SimagentsError(f"cannot save {path}: there are no episodes")
    for i, ep in enumerate(episodes):
        ep.validate(observation_space, action_space, where=f"cannot save {path}: episode {i}")
    try:
        json.dumps(env_kwargs)
    except TypeError as e:
        raise SimagentsError(
            f"cannot save {path}: env kwargs {env_kwargs!r} are not JSON-serialisable ({e})"
        ) from None

    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    policies = sorted({ep.policy for ep in episodes})
    policy_ids = {name: i for i, name in enumerate(policies)}
    buffers = [
        EpisodeBuffer(
            seed=ep.seed,
            observations=ep.observations,
            actions=ep.actions,
            rewards=ep.rewards,
            terminations=ep.terminations,
            truncations=ep.truncations,
            infos={
                # Minari infos have T+1 entries (the first is the reset info).
                "intervention": np.concatenate([[False], np.asarray(ep.interventions, dtype=bool)]),
                "policy_id": np.full(len(ep) + 1, policy_ids[ep.policy], dtype=np.int64),
                "block": np.full(len(ep) + 1, ep.block, dtype=np.int64),
                # One row per observation, as the infos: the reset info's row is the first's.
                **({"aux_targets": np.asarray(ep.aux_targets, dtype=np.float32)} if ep.n_aux_targets else {}),
            },
        )
        for ep in episodes
    ]
    if description is None:
        counts = {name: sum(ep.policy == name for ep in episodes) for name in policies}
        description = (
            f"simagents dataset: {len(episodes)} episodes of {env_id or 'an unnamed env'}; "
            f"episodes per behaviour policy: {json.dumps(counts)}"
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    env = _env_for_spec(env_id, env_kwargs)
    try:
        dataset_id = _dataset_id_for(path)
        with _minari_root_at(staging), warnings.catch_warnings():
            # minari nags about unset author, email, code link, algorithm and env; our metadata
            # already records what matters, so these are noise for local data.
            warnings.filterwarnings("ignore", message=r"`\w+` is set to None")
            warnings.filterwarnings("ignore", message=r"env_spec is None")
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env,
                observation_space=observation_space,
                action_space=action_space,
                description=description,
                algorithm_name=algorithm_name,
                jpeg_encoding=False,  # lossless: a round trip must give identical arrays
            )
            dataset.storage.update_metadata(
                {
                    META_KEY: {
                        "format": FORMAT,
                        "policies": policies,
                        "env_id": env_id,
                        "env_kwargs": env_kwargs,
                    }
                }
            )
        built = staging / dataset_id
        if path.is_dir():
            path.rmdir()  # empty (checked above); rename cannot replace a folder on every OS
        os.rename(built, path)
    finally:
        if env is not None:
            env.close()
        shutil.rmtree(staging, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- load


def resolve_dataset_path(ref: str | Path) -> Path:
    """Find the dataset folder for ``ref``: a folder path, or a Minari id in the local Minari root."""
    given = Path(ref).expanduser()
    if given.exists():
        # Be forgiving about pointing inside the dataset: at data/ or at one of its files.
        if given.is_file() and given.parent.name == "data":
            return given.parent.parent.absolute()
        if given.name == "data" and (given / "metadata.json").exists() and not (given / "data").exists():
            return given.parent.absolute()
        return given.absolute()
    looked = [str(given.absolute())]
    root = minari_root()
    match = _DATASET_ID.fullmatch(str(ref)) if isinstance(ref, str) else None
    if match:
        if match["version"] is None:
            # Like minari: an id without -vN means the newest local version.
            parent = root / match["namespace"] if match["namespace"] else root
            versions = sorted(
                (int(m["v"]), p)
                for p in (parent.iterdir() if parent.is_dir() else [])
                if (m := re.fullmatch(rf"{re.escape(match['name'])}-v(?P<v>\d+)", p.name))
            )
            if versions:
                return versions[-1][1].absolute()
        candidate = root / str(ref)
        if (candidate / "data").is_dir():
            return candidate.absolute()
        looked.append(f"{candidate} (as a Minari dataset id in MINARI_DATASETS_PATH={root})")
    raise SimagentsError(
        f"dataset {str(ref)!r} not found: looked for {' and '.join(looked)}. "
        "Check the path, make the data with `simagents collect --out ...`, "
        "or set MINARI_DATASETS_PATH to the Minari root that holds it"
    )


def load_dataset(ref: str | Path) -> Dataset:
    """Load a Minari dataset (ours or anyone's) from a folder path or a local Minari dataset id.

    Example (``data/cartpole`` as made by :func:`~simagents.data.collect.collect`'s example):

    >>> from simagents import load_dataset
    >>> dataset = load_dataset("data/cartpole")
    >>> len(dataset), dataset.action_space
    (20, Discrete(2))
    """
    dataset, _, stream = stream_dataset(ref)
    return replace(dataset, episodes=list(stream))


def stream_dataset(ref: str | Path) -> tuple[Dataset, np.ndarray, Iterator[Episode]]:
    """Open a dataset for reading episode by episode, for data larger than memory.

    Returns the dataset's description (``episodes`` empty), each episode's step count (n_episodes,)
    int64, and a generator of its episodes, validated like :func:`load_dataset`'s, read lazily
    from the HDF5 file: only the episode being read sits in memory.
    """
    dataset, mds, ours = _open_dataset(ref)
    main_file = _main_file(dataset)
    lengths = _episode_lengths(mds.storage.total_episodes, main_file)
    if not len(lengths):
        raise SimagentsError(f"{main_file} holds no episodes; collect data first")
    return (
        dataset,
        lengths,
        _read_episodes(mds, main_file, dataset.observation_space, dataset.action_space, ours),
    )


def dataset_header(ref: str | Path) -> Dataset:
    """A dataset's description (spaces, env, path; ``episodes`` empty) from its metadata, without
    the scan of every episode that :func:`stream_dataset` makes: what a caller needs to name the
    env or compare spaces reads in the same time however many episodes the file holds."""
    return _open_dataset(ref)[0]


def _main_file(dataset: Dataset) -> Path:
    assert dataset.path is not None
    return dataset.path / "data" / "main_data.hdf5"


def _open_dataset(ref: str | Path) -> tuple[Dataset, Any, dict[str, Any] | None]:
    """The dataset's description, minari's handle on it and our metadata entry, all checked."""
    import minari

    register_simagents_envs()  # a dataset's env spec may name a simagents/... env
    folder = resolve_dataset_path(ref)
    data_dir = folder / "data"
    metadata_file = data_dir / "metadata.json"
    main_file = data_dir / "main_data.hdf5"
    if not metadata_file.is_file():
        raise SimagentsError(
            f"{folder} is not a Minari dataset: {metadata_file} is missing. Point at the folder that "
            "contains data/metadata.json, or make a dataset with `simagents collect`"
        )
    try:
        metadata = json.loads(metadata_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SimagentsError(f"{metadata_file} is not valid JSON ({e}); re-create the dataset") from None
    if not isinstance(metadata, dict):
        raise SimagentsError(f"{metadata_file} should hold a JSON object; re-create the dataset")
    data_format = metadata.get("data_format", "hdf5")
    if data_format != "hdf5":
        raise SimagentsError(
            f"{metadata_file}: data_format {data_format!r} is not supported; convert the dataset to hdf5"
        )
    if not main_file.is_file():
        raise SimagentsError(
            f"{main_file} is missing; the dataset is incomplete, re-create or re-download it"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mds = minari.MinariDataset(data_dir)
    except Exception as e:  # minari raises bare asserts/ValueErrors for bad metadata
        raise SimagentsError(
            f"{metadata_file}: minari cannot open this dataset ({type(e).__name__}: {e}); "
            "re-create it, or check that the env it names is installed"
        ) from None
    obs_space, act_space = mds.observation_space, mds.action_space
    for what, space in (("observation", obs_space), ("action", act_space)):
        try:
            space_shape(space)
        except SimagentsError as e:
            raise SimagentsError(f"{metadata_file}: {what} {e}") from None

    ours = metadata.get(META_KEY)
    if ours is not None:
        _check_our_metadata(ours, metadata_file)
    total = mds.storage.total_episodes
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise SimagentsError(
            f"{metadata_file}: total_episodes should be a count of episodes, not {total!r}; "
            "fix it or re-create the dataset"
        )
    env_id = ours.get("env_id") if ours else None
    env_kwargs = dict(ours.get("env_kwargs") or {}) if ours else {}
    if ours is None and mds.env_spec is not None:
        env_id, env_kwargs = mds.env_spec.id, dict(mds.env_spec.kwargs)
    return Dataset([], obs_space, act_space, env_id=env_id, env_kwargs=env_kwargs, path=folder), mds, ours


def _check_our_metadata(ours: Any, metadata_file: Path) -> None:
    if not isinstance(ours, dict) or not isinstance(ours.get("policies"), list):
        raise SimagentsError(
            f"{metadata_file}: the {META_KEY!r} entry should be an object with a 'policies' list; "
            "remove the entry to load the data unlabelled, or re-create the dataset"
        )
    version = ours.get("format", FORMAT)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT:
        raise SimagentsError(
            f"{metadata_file}: unknown {META_KEY} format {version!r} (this simagents reads {FORMAT}); "
            "upgrade simagents"
        )
    for key, kinds, expected in (
        ("policies", (list,), "a list of policy names"),
        ("env_id", (str, type(None)), "an env id or null"),
        ("env_kwargs", (dict, type(None)), "an object of env keyword arguments or null"),
    ):
        value = ours.get(key)
        if not isinstance(value, kinds) or (
            isinstance(value, list) and not all(isinstance(p, str) for p in value)
        ):
            raise SimagentsError(
                f"{metadata_file}: {META_KEY}/{key} should be {expected}, not {value!r}; fix it, or remove "
                f"the {META_KEY!r} entry to load the data unlabelled"
            )


def _episode_lengths(n: int, main_file: Path) -> np.ndarray:
    """Each episode's step count, (n,) int64, checking the file's structure on the way so that a
    missing key is named instead of surfacing later as a KeyError."""
    lengths = np.zeros(n, dtype=np.int64)
    current = "the file"
    try:
        with h5py.File(main_file, "r") as f:
            for i in range(n):
                current = f"episode {i}"
                group = f.get(f"episode_{i}")
                if not isinstance(group, h5py.Group):
                    raise SimagentsError(
                        f"{main_file}: metadata.json lists {n} episodes but 'episode_{i}' is missing; "
                        "the dataset is incomplete, re-create it"
                    )
                for key in _REQUIRED_KEYS:
                    if key not in group:
                        raise SimagentsError(
                            f"{main_file} episode {i}: missing {key!r}; every episode needs "
                            f"{', '.join(_REQUIRED_KEYS)}"
                        )
                rewards = group["rewards"]
                # A malformed (e.g. scalar) rewards entry is named when the episode is read.
                lengths[i] = rewards.shape[0] if isinstance(rewards, h5py.Dataset) and rewards.ndim else 0
    except SimagentsError:
        raise
    except Exception as e:
        raise _unreadable(main_file, current, e) from None
    return lengths


def _unreadable(main_file: Path, where: str, error: Exception) -> SimagentsError:
    """The error for what h5py or minari could not read at ``where`` (an episode, or the file)."""
    if isinstance(error, OSError):
        return SimagentsError(
            f"{main_file}: cannot read {where} ({error}); the HDF5 file is truncated or corrupt, "
            "re-create or re-download the dataset"
        )
    # Anything else they trip over is a malformed file.
    return SimagentsError(
        f"{main_file}: {where} is malformed ({type(error).__name__}: {error}); re-create the dataset"
    )


def _read_episodes(
    mds: Any,
    main_file: Path,
    obs_space: gym.Space[Any],
    act_space: gym.Space[Any],
    ours: dict[str, Any] | None,
) -> Iterator[Episode]:
    n = mds.storage.total_episodes
    current = "the file"
    try:
        metas = list(mds.storage.get_episode_metadata(range(n)))
        for i, raw in enumerate(mds.storage.get_episodes(range(n))):
            current = f"episode {i}"
            yield _to_episode(raw, metas[i], i, main_file, obs_space, act_space, ours)
    except SimagentsError:
        raise
    except Exception as e:
        raise _unreadable(main_file, current, e) from None


def _to_episode(
    raw: dict[str, Any],
    meta: dict[str, Any],
    index: int,
    main_file: Path,
    obs_space: gym.Space[Any],
    act_space: gym.Space[Any],
    ours: dict[str, Any] | None,
) -> Episode:
    where = f"{main_file} episode {index}"
    seed = meta.get("seed")
    episode = episode_from_arrays(
        raw["observations"],
        raw["actions"],
        raw["rewards"],
        raw["terminations"],
        raw["truncations"],
        obs_space,
        act_space,
        seed=None if seed is None else int(seed),
    )
    episode.validate(obs_space, act_space, where=where)
    if ours is None:
        return episode

    n = len(episode)
    infos = raw.get("infos") or {}
    flags = infos.get("intervention")
    policy_ids = infos.get("policy_id")
    for key, value in (("intervention", flags), ("policy_id", policy_ids)):
        if value is None or np.shape(value) != (n + 1,):
            raise SimagentsError(
                f"{where}: infos/{key} has shape {np.shape(value) if value is not None else 'missing'}, "
                f"expected ({n + 1},) (one per step plus the reset); remove the {META_KEY!r} entry from "
                "metadata.json to load the data unlabelled, or re-create the dataset"
            )
    policies = ours["policies"]
    policy_id = int(np.asarray(policy_ids)[0])
    if not 0 <= policy_id < len(policies):
        raise SimagentsError(
            f"{where}: infos/policy_id {policy_id} is not an index into the {len(policies)} policies listed "
            f"in metadata.json; re-create the dataset"
        )
    blocks = infos.get("block")
    if blocks is not None and np.shape(blocks) != (n + 1,):
        raise SimagentsError(
            f"{where}: infos/block has shape {np.shape(blocks)}, expected ({n + 1},); re-create the dataset"
        )
    aux_targets = infos.get("aux_targets")
    if aux_targets is not None and (np.ndim(aux_targets) != 2 or len(aux_targets) != n + 1):
        raise SimagentsError(
            f"{where}: infos/aux_targets has shape {np.shape(aux_targets)}, expected ({n + 1}, A) (one row "
            "per observation); re-create the dataset"
        )
    labelled = Episode(
        observations=episode.observations,
        actions=episode.actions,
        rewards=episode.rewards,
        terminations=episode.terminations,
        truncations=episode.truncations,
        interventions=np.asarray(flags, dtype=bool)[1:],
        policy=str(policies[policy_id]),
        seed=episode.seed,
        block=-1 if blocks is None else int(np.asarray(blocks)[0]),
        aux_targets=np.asarray(
            np.zeros((n + 1, 0)) if aux_targets is None else aux_targets, dtype=np.float32
        ),
    )
    if aux_targets is not None:
        labelled.validate(obs_space, act_space, where=where)
    return labelled


# --------------------------------------------------------------------------- spaces


def _same_space(a: gym.Space[Any], b: gym.Space[Any]) -> bool:
    # Dtype differences are tolerated: the episode contract casts to int64 / float32 anyway.
    if isinstance(a, gym.spaces.Discrete) and isinstance(b, gym.spaces.Discrete):
        return int(a.n) == int(b.n) and int(a.start) == int(b.start)
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        if a.shape != b.shape:
            return False
        return bool(
            np.allclose(a.low.astype(np.float64), b.low.astype(np.float64), rtol=1e-6, equal_nan=True)
            and np.allclose(a.high.astype(np.float64), b.high.astype(np.float64), rtol=1e-6, equal_nan=True)
        )
    return a == b


def check_spaces(dataset: Dataset, env: gym.Env) -> None:
    """Raise if ``env``'s observation or action space differs from the dataset's."""
    source = str(dataset.path) if dataset.path is not None else "the dataset"
    if dataset.env_id:
        kwargs = f" with kwargs {dataset.env_kwargs}" if dataset.env_kwargs else ""
        source += f" (collected on {dataset.env_id}{kwargs})"
    check_env_spaces(dataset.observation_space, dataset.action_space, env, source)


def check_env_spaces(
    observation_space: gym.Space[Any], action_space: gym.Space[Any], env: gym.Env, source: str
) -> None:
    """Raise, naming ``source`` (a dataset or a checkpoint), if ``env``'s spaces differ from these."""
    env_name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    for what, ours, theirs in (
        ("observation", observation_space, env.observation_space),
        ("action", action_space, env.action_space),
    ):
        if not _same_space(ours, theirs):
            raise SimagentsError(
                f"{source}: its {what} space {ours} does not match env {env_name}'s {theirs}; "
                "use the env (and env kwargs) the data was collected with"
            )
