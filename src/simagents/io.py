"""Small file helpers every writer uses: atomic writes, JSON with clear errors, typed configs.

A file is written to a temporary sibling and renamed into place, so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from simagents.errors import SimagentsError

T = TypeVar("T")


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


def to_dict(config: Any) -> dict[str, Any]:
    """A (nested) config dataclass as plain JSON-ready values."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))


def from_dict(cls: type[T], values: Any, source: str) -> T:
    """Build config dataclass ``cls`` from a dict; unknown or missing keys name ``source`` and the field."""
    if not isinstance(values, dict):
        raise SimagentsError(
            f"{source}: expected a JSON object for {cls.__name__}, got {type(values).__name__}"
        )
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SimagentsError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; valid keys: {', '.join(known)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{source} [{name}]")  # type: ignore[arg-type]
        elif hint is Path or (isinstance(hint, types.UnionType) and Path in typing.get_args(hint)):
            value = None if value is None else Path(value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SimagentsError(f"{source}: {exc}; add the missing key(s)") from None
    except ValueError as exc:
        raise SimagentsError(f"{source}: {exc}") from None
