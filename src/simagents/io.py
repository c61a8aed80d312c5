"""Small file helpers every writer uses: atomic writes, JSON with clear errors, typed configs,
and the lock that keeps two processes out of one run folder.

A file is written to a temporary sibling and renamed into place, so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from simagents.errors import SimagentsError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_run_record(folder: Path, record: Any, name: str = "config.json") -> None:
    """Start a run folder's record: ``record`` (the resolved settings) as JSON in ``name``, and
    the command line that made it in ``command.txt``, so that a folder explains itself."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / name, record)
    atomic_write_text(folder / "command.txt", shlex.join(sys.argv) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_json(path: Path, what: str = "file") -> Any:
    """Read JSON, turning a missing or malformed file into a SimagentsError that names it."""
    path = Path(path)
    if not path.is_file():
        raise SimagentsError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SimagentsError(f"{path}: {what} is not valid JSON ({exc}); the file is corrupt") from None


def option_value(text: str) -> Any:
    """A ``key=value`` option's value: JSON where it parses (numbers, true, null), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def to_dict(config: Any) -> dict[str, Any]:
    """A (nested) config dataclass as plain JSON-ready values."""
    values: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))
    return values


def from_dict(cls: type[T], values: Any, source: str) -> T:
    """Build config dataclass ``cls`` from a dict; a wrong, unknown or missing key names ``source`` and the field.

    Values are checked against the field's type hint (a JSON file can hold anything), so a bad
    value fails here with its name instead of deep inside the model or the trainer.
    """
    if not isinstance(values, dict):
        raise SimagentsError(
            f"{source}: expected a JSON object for {cls.__name__}, got {type(values).__name__}"
        )
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise SimagentsError(
            f"{source}: unknown key(s) {', '.join(map(str, unknown))} for {cls.__name__}; "
            f"valid keys: {', '.join(known)}"
        )
    missing = [
        name
        for name, f in known.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SimagentsError(f"{source}: missing key(s) {', '.join(missing)} for {cls.__name__}; add them")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _typed_value(hints[name], value, f"{source} [{name}]") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ArithmeticError) as exc:  # a config's own checks in __post_init__
        raise SimagentsError(f"{source}: {exc}") from None


def _typed_value(hint: Any, value: Any, where: str) -> Any:
    """``value`` converted to ``hint`` (Path, tuple) after checking that it is one; else a SimagentsError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _typed_value(option, value, where)
            except SimagentsError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else _wrong_type(where, " or ".join(map(_name, options)), value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong_type(where, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(where, "an integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong_type(where, "a number", value)
        if not math.isfinite(value):
            raise SimagentsError(f"{where}: {value!r} is not a finite number; give a finite value")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise _wrong_type(where, "a string", value)
        return value
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise _wrong_type(where, "a path", value)
        return Path(value)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _wrong_type(where, "a list", value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _wrong_type(where, f"a list of {len(args)} values", value)
            items = [
                _typed_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            ]
        else:
            item = args[0] if args else Any
            items = [_typed_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong_type(where, "an object", value)
        return value
    return value  # a type this reader does not check; the dataclass's own checks still run


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _wrong_type(where: str, expected: str, value: Any) -> SimagentsError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return SimagentsError(f"{where}: expected {expected}, got {type(value).__name__} {shown}; fix the value")


# --------------------------------------------------------------------------- run-folder lock

LOCK_NAME = ".lock"
"""The lock file inside a locked folder; writers treat a folder holding only it as empty."""

_held: dict[Path, tuple[int, int]] = {}  # lock file -> (file descriptor, nesting depth), this process


@contextmanager
def hold_lock(folder: str | Path, what: str, lock_file: str | Path | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` while the block runs; another process is refused at once.

    The lock is ``flock`` on ``folder/.lock`` (or ``lock_file``, for a folder that must stay
    empty until it is renamed into place), so the kernel drops it when the holder exits, even
    by ``kill -9``: a lock is never stale. The file is removed on release. Re-entrant within
    a process, so a command may lock a folder that a function it calls locks again. A folder
    the lock had to create and that is still empty at release is removed: a refused or failed
    command leaves nothing behind.
    """
    folder = Path(folder).expanduser().absolute()
    path = Path(lock_file).expanduser().absolute() if lock_file is not None else folder / LOCK_NAME
    created = not path.parent.exists()
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
    else:
        fd = _acquire(path, folder, what)
        _held[path] = (fd, 1)
    try:
        yield folder
    finally:
        fd, depth = _held[path]
        if depth > 1:
            _held[path] = (fd, depth - 1)
        else:
            del _held[path]
            # Unlink before unlocking: a process that opened the old file sees it vanish and retries.
            path.unlink(missing_ok=True)
            os.close(fd)
            if created and path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()


def _acquire(path: Path, folder: Path, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SimagentsError(
                f"{folder}: another process (pid {holder}) is writing this {what}; wait for it to finish, "
                "or choose another --out"
            ) from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the holder released and removed the file between our open and flock


def check_can_write(path: str | Path) -> Path:
    """Return ``path`` as an absolute Path, or raise if a non-empty file or folder is already there.

    A folder that holds only a run-folder lock counts as empty: the lock may be our own.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and (not path.is_dir() or any(p.name != LOCK_NAME for p in path.iterdir())):
        raise SimagentsError(
            f"{path} already exists and is not empty; refusing to overwrite it. "
            "Choose another --out, or delete it first if you no longer need it"
        )
    return path


@contextmanager
def fresh_folder(out: str | Path, what: str) -> Iterator[Path]:
    """Write one run into ``out``: absent or empty on entry, locked while the block runs.

    If the block raises (a bad input found late, Ctrl-C), everything in the folder is removed,
    as the folder was absent or empty before: nothing half-written is left that looks like a
    result, and an empty folder the user had made is kept.
    """
    folder = check_can_write(out)
    existed = folder.exists()
    with hold_lock(folder, what):
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if existed:
                folder.mkdir(parents=True, exist_ok=True)
            raise
