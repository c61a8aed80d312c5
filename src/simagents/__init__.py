"""simagents: simulators of agents, and the agents you can make from them.

Train a trajectory simulator on offline RL data, wrap it into agents (``imitation``, ``dt``,
``edt``, ``cdt`` or your own), and measure what kind of agent came out. Every CLI command is
one call here, with the same typed config dataclasses::

    >>> from pathlib import Path
    >>> import simagents
    >>> data = simagents.collect(simagents.CollectConfig(env="CartPole-v1", out=Path("data/cartpole"), episodes=20))
    >>> config = simagents.TrainConfig(
    ...     data=(str(data),), out=Path("runs/cartpole"), steps=20,
    ...     model=simagents.SimulatorConfig(n_embd=32, n_layer=1, n_return_bins=51),
    ... )
    >>> run = simagents.train(config, progress=False)
    >>> agent = simagents.make_agent("edt", simagents.Simulator.load(run))
    >>> import gymnasium
    >>> result = simagents.evaluate(agent, gymnasium.make("CartPole-v1"), episodes=2, seed=0)
    >>> len(result.returns)
    2

``help(simagents.NAME)`` shows a runnable example for each name in ``__all__``; the guide is
in ``docs/``. Names load on first use, so ``import simagents`` stays cheap.
"""

# The module's own tools carry a leading underscore so that ``simagents.sys`` and the like are
# not public by accident: the public names are exactly ``__all__``.
import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

if _typing.TYPE_CHECKING:  # the real objects, for type checkers and IDEs; at run time they load lazily
    from simagents.agents import Agent, SimulatorAgent, evaluate, make_agent, register_agent
    from simagents.data.collect import CollectConfig, collect
    from simagents.data.minari_io import load_dataset
    from simagents.envs import Testbed, register_testbed
    from simagents.errors import SimagentsError
    from simagents.model import Simulator, SimulatorConfig
    from simagents.plugins import load_plugins
    from simagents.study.run import run_study
    from simagents.study.testbed import run_testbed
    from simagents.train import TrainConfig, train

# Public name -> the module that defines it. Importing a module here would import torch,
# gymnasium and minari on `import simagents` (seconds), which every CLI start would pay.
_EXPORTS = {
    "SimagentsError": "simagents.errors",
    "CollectConfig": "simagents.data.collect",
    "collect": "simagents.data.collect",
    "load_dataset": "simagents.data.minari_io",
    "SimulatorConfig": "simagents.model",
    "Simulator": "simagents.model",
    "TrainConfig": "simagents.train",
    "train": "simagents.train",
    "Agent": "simagents.agents",
    "SimulatorAgent": "simagents.agents",
    "make_agent": "simagents.agents",
    "register_agent": "simagents.agents",
    "evaluate": "simagents.agents",
    "Testbed": "simagents.envs",
    "register_testbed": "simagents.envs",
    "run_testbed": "simagents.study.testbed",
    "run_study": "simagents.study.run",
    "load_plugins": "simagents.plugins",
}

__all__ = [
    "Agent",
    "CollectConfig",
    "SimagentsError",
    "Simulator",
    "SimulatorAgent",
    "SimulatorConfig",
    "Testbed",
    "TrainConfig",
    "collect",
    "evaluate",
    "load_dataset",
    "load_plugins",
    "make_agent",
    "register_agent",
    "register_testbed",
    "run_study",
    "run_testbed",
    "train",
]


class _Package(_types.ModuleType):
    """The package module, kept from losing a public name to a submodule of the same name.

    Importing ``simagents.train`` (the module) makes Python set the package attribute ``train``
    to that module, which would hide the function ``simagents.train``. The function wins;
    the module is still ``from simagents.train import ...`` (that reads ``sys.modules``).
    """

    def __setattr__(self, name: str, value: _typing.Any) -> None:
        if (
            isinstance(value, _types.ModuleType)
            and name in _EXPORTS
            and value.__name__ == f"{__name__}.{name}"
        ):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'simagents' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
