"""Every module's docstring examples run, as doctests, in the default test run."""

import doctest
import importlib
import os

import pytest

import tfmagic

PACKAGE_DIR = os.path.dirname(tfmagic.__file__)


def _modules_with_examples() -> list[str]:
    """Modules whose source holds a ``>>>`` example, found without importing them (the
    binaries' modules define absl flags on import, once per process)."""
    names = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for file in sorted(files):
            path = os.path.join(root, file)
            if not file.endswith(".py"):
                continue
            with open(path) as f:
                if ">>> " not in f.read():
                    continue
            parts = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_package_has_examples():
    assert {"tfmagic.schedules", "tfmagic.registry", "tfmagic.wiring", "tfmagic.choices",
            "tfmagic.recipe"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has '>>> ' in its source but no doctest was found"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
