"""The library as users import it: ``simagents.*``, its runnable docstrings, and plugins."""

from __future__ import annotations

import doctest
import io
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import simagents
from simagents.agents import AGENTS
from simagents.cli import main
from simagents.errors import SimagentsError
from simagents.plugins import ENV_VAR, load_plugin, load_plugins, plugins_from_environment, split_plugin_args

REPO = Path(__file__).resolve().parent.parent

# The order in which the public names' examples run: each may use files an earlier one made
# (collect's data/cartpole, train's runs/cartpole), as a reader following the pipeline would.
PIPELINE = (
    "SimagentsError",
    "CollectConfig",
    "collect",
    "load_dataset",
    "SimulatorConfig",
    "TrainConfig",
    "train",
    "Simulator",
    "make_agent",
    "evaluate",
    "Agent",
    "SimulatorAgent",
    "register_agent",
    "load_plugins",
    "Testbed",
    "register_testbed",
    "run_testbed",
    "run_study",
)
# A literal block after a line "Example ...::" is Python too (the other docstring style).
LITERAL_EXAMPLE = re.compile(
    r"^[ \t]*Example[^\n]*::[ \t]*\n\n(?P<body>(?:[ \t]+\S[^\n]*\n|[ \t]*\n)+)", re.MULTILINE
)


def examples_of(obj: Any) -> tuple[list[doctest.DocTest], list[str]]:
    """The doctests and the literal ``Example::`` blocks in ``obj``'s own docstring."""
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", "simagents"))
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(obj, name, globs={}) if t.examples]
    literals = [textwrap.dedent(m["body"]) for m in LITERAL_EXAMPLE.finditer(obj.__doc__ or "")]
    return tests, literals


def run_examples(obj: Any, where: str) -> None:
    tests, literals = examples_of(obj)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, f"{where}: its docstring example fails:\n{report.getvalue()}"
    for code in literals:
        exec(compile(code, f"{where} docstring", "exec"), {"__name__": where})


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> Path:
    """An empty working folder beside the repository's examples/, one torch thread."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path


# --------------------------------------------------------------------------- the public names


def test_import_is_cheap_and_loads_names_on_use():
    code = (
        "import sys, simagents; heavy = ('torch', 'gymnasium', 'minari');"
        "print([m for m in heavy if m in sys.modules]); simagents.make_agent; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"]


def test_every_public_name_resolves_and_nothing_else_is_public():
    assert sorted(set(simagents.__all__)) == sorted(simagents.__all__) == dir(simagents)
    for name in simagents.__all__:
        assert getattr(simagents, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        simagents.nope  # noqa: B018
    namespace: dict[str, Any] = {}
    exec("from simagents import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(simagents.__all__)
    # Nor as an attribute: besides __all__ only subpackages (simagents.data, ...) lack an underscore.
    stray = {
        k
        for k, v in vars(simagents).items()
        if not k.startswith("_")
        and not (isinstance(v, types.ModuleType) and v.__name__.startswith("simagents."))
    }
    assert stray <= set(simagents.__all__), f"public by accident: {sorted(stray - set(simagents.__all__))}"


def test_the_function_train_survives_importing_the_module_train():
    import simagents.train as _  # noqa: F401  (sets the package attribute to the module, normally)
    from simagents.train import TrainConfig

    assert callable(simagents.train) and simagents.train.__module__ == "simagents.train"
    assert simagents.TrainConfig is TrainConfig


def test_every_public_name_has_a_docstring_with_an_example():
    assert set(PIPELINE) == set(simagents.__all__), "place a new public name in PIPELINE"
    for name in simagents.__all__:
        tests, literals = examples_of(getattr(simagents, name))
        assert tests or literals, f"simagents.{name}: its docstring has no example (>>> or Example::)"


def test_the_docstring_examples_run(workdir: Path):
    for name in PIPELINE:
        run_examples(getattr(simagents, name), f"simagents.{name}")
    assert (workdir / "runs" / "cartpole" / "checkpoints").is_dir()


def test_the_package_docstring_example_runs(workdir: Path):
    run_examples(simagents, "simagents")


# --------------------------------------------------------------------------- plugins


def write_plugin(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_plugin_file_registers_its_agent_once(tmp_path: Path):
    body = """
        from simagents import register_agent
        from simagents.agents.imitation import ImitationAgent

        LOADS = []
        LOADS.append(1)
        register_agent("plugin_test_agent")(ImitationAgent)
    """
    path = write_plugin(tmp_path, "plugin_test_agents", body)
    module = load_plugin(str(path))
    assert AGENTS["plugin_test_agent"] is module.ImitationAgent
    assert load_plugin(str(path)) is module and module.LOADS == [1]  # not imported twice
    assert sys.modules["plugin_test_agents"] is module  # importable by name, as gymnasium needs


def test_plugins_come_from_the_environment_then_the_flags(tmp_path: Path):
    first = write_plugin(tmp_path, "plugin_test_first", "ORDER = []\n")
    second = write_plugin(
        tmp_path, "plugin_test_second", "import plugin_test_first\nplugin_test_first.ORDER.append(2)\n"
    )
    environ = {ENV_VAR: f"{first}{os.pathsep}{os.pathsep}"}
    assert plugins_from_environment(environ) == [str(first)]
    modules = load_plugins([str(second), "json"], environ=environ)
    assert [m.__name__ for m in modules] == ["plugin_test_first", "plugin_test_second", "json"]
    assert modules[0].ORDER == [2]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{tmp}/missing.py", "missing.py: no such file"),
        ("{tmp}/notes.txt", "not a .py file"),
        ("no_such_plugin_module", "'no_such_plugin_module': no module of that name"),
        ("{tmp}/broken_plugin.py", "broken_plugin.py failed to import: ZeroDivisionError"),
        ("{tmp}/needs_a_package.py", "needs_a_package.py failed to import: ModuleNotFoundError"),
        ("{tmp}/json.py", "'json' is already taken"),
        ("{tmp}/bad-name.py", "not a valid module name"),
    ],
)
def test_a_bad_plugin_is_named_in_one_error(tmp_path: Path, spec: str, expected: str):
    (tmp_path / "notes.txt").write_text("x = 1\n")
    write_plugin(tmp_path, "broken_plugin", "1 / 0\n")
    write_plugin(tmp_path, "needs_a_package", "import no_such_package_anywhere\n")
    write_plugin(tmp_path, "json", "x = 1\n")
    write_plugin(tmp_path, "bad-name", "x = 1\n")
    with pytest.raises(SimagentsError, match=re.escape(expected)):
        load_plugin(spec.format(tmp=tmp_path))
    assert "broken_plugin" not in sys.modules  # a failed import leaves nothing half-loaded


def test_plugin_flags_are_taken_from_anywhere_on_the_line():
    argv = ["--plugin", "a.py", "eval", "run", "--plugin=b", "--agent", "x"]
    assert split_plugin_args(argv) == (["a.py", "b"], ["eval", "run", "--agent", "x"])
    with pytest.raises(SimagentsError, match="--plugin needs a value"):
        split_plugin_args(["eval", "--plugin"])


def test_the_cli_reports_a_bad_plugin_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["--plugin", str(tmp_path / "nowhere.py"), "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere.py" in err[0]


def test_the_cli_loads_plugins_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent_plugin.py"))
    assert main(["info", str(tmp_path)]) == 2
    assert "absent_plugin.py" in capsys.readouterr().err
