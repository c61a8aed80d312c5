"""Plugins: the user's own agents and testbeds, loaded before a command runs.

A plugin is a Python module (an importable name, or a path to a ``.py`` file) whose import
calls :func:`~simagents.agents.register_agent` or :func:`~simagents.envs.register_testbed`.
The command line loads plugins from ``--plugin`` (repeatable, anywhere on the line) and from
the environment variable ``SIMAGENTS_PLUGINS`` (entries separated by ``os.pathsep``), so::

    simagents --plugin examples/custom_agent.py eval runs/cartpole --agent risk_averse
    SIMAGENTS_PLUGINS=examples/custom_testbed.py simagents testbed death_in_damascus --out runs/dd

A file is imported under its stem as module name (``custom_agent``), so the classes it defines
have an importable ``__module__``: gymnasium rebuilds a registered env from that name.
Loading the same plugin twice imports it once.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from simagents.errors import SimagentsError

ENV_VAR = "SIMAGENTS_PLUGINS"
"""Environment variable with plugins to load, separated by ``os.pathsep`` (``:`` on Unix)."""

FLAG = "--plugin"


def load_plugin(spec: str) -> ModuleType:
    """Import one plugin: a path to a ``.py`` file or an importable module name.

    Example:

    >>> from simagents.plugins import load_plugin
    >>> load_plugin("json").__name__
    'json'
    """
    spec = spec.strip()
    if not spec:
        raise SimagentsError(f"{FLAG}: empty plugin name; pass a .py file or a module name")
    if spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec):
        return _load_file(Path(spec).expanduser())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.startswith(exc.name):  # the plugin itself, not a dependency of it
            raise SimagentsError(
                f"plugin {spec!r}: no module of that name; pass a path to a .py file or install the module"
            ) from None
        raise SimagentsError(f"plugin {spec!r} failed to import: {exc}") from None
    except SimagentsError:
        raise
    except Exception as exc:
        raise SimagentsError(f"plugin {spec!r} failed to import: {type(exc).__name__}: {exc}") from None


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise SimagentsError(
            f"plugin {path}: no such file; pass the path of a .py file that registers agents or testbeds"
        )
    if path.suffix != ".py":
        raise SimagentsError(f"plugin {path}: not a .py file")
    name = path.stem
    if not name.isidentifier():
        raise SimagentsError(f"plugin {path}: {name!r} is not a valid module name; rename the file")
    loaded = sys.modules.get(name)
    if loaded is not None:
        loaded_file = getattr(loaded, "__file__", None)
        if loaded_file is not None and Path(loaded_file).resolve() == path.resolve():
            return loaded
        raise SimagentsError(
            f"plugin {path}: the module name {name!r} is already taken by {loaded_file or 'a built-in module'}; "
            "rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SimagentsError(f"plugin {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: dataclasses and gymnasium look the module up by name
    try:
        spec.loader.exec_module(module)
    except SimagentsError:
        del sys.modules[name]
        raise
    except Exception as exc:  # the user's code: one line naming the file, as for any bad input
        del sys.modules[name]
        raise SimagentsError(f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from None
    return module


def plugins_from_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """The plugins named in ``SIMAGENTS_PLUGINS`` (empty entries ignored)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return [entry for entry in value.split(os.pathsep) if entry.strip()]


def load_plugins(specs: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> list[ModuleType]:
    """Import the plugins in ``SIMAGENTS_PLUGINS``, then ``specs``; a bad one raises :class:`SimagentsError`.

    Example: make the custom planner of ``examples/custom_agent.py`` available to
    :func:`simagents.make_agent`, the CLI and the study:

    >>> import simagents
    >>> modules = simagents.load_plugins(["examples/custom_agent.py"])
    >>> from simagents.agents import AGENTS
    >>> "risk_averse" in AGENTS
    True
    """
    return [load_plugin(spec) for spec in [*plugins_from_environment(environ), *specs]]


def split_plugin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Take every ``--plugin X`` / ``--plugin=X`` out of a command line: ``(plugins, the rest)``."""
    plugins: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == FLAG:
            value = next(args, None)
            if value is None or value.startswith("-"):
                raise SimagentsError(
                    f"{FLAG} needs a value: a .py file or a module name, e.g. {FLAG} my_agents.py"
                )
            plugins.append(value)
        elif arg.startswith(FLAG + "="):
            plugins.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return plugins, rest
