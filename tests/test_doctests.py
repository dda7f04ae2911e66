"""Every module's docstring examples run, as doctests, in the default test run."""

import doctest
import importlib
import os
import re

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


# Modules whose examples their own test file already runs (doctest.testmod there).
RUN_ELSEWHERE = {
    "tfmagic.augment.color": "test_augment_color.py",
    "tfmagic.augment.crops": "test_augment_crops.py",
    "tfmagic.augment.erasing": "test_augment_mixing.py",
    "tfmagic.augment.mixing": "test_augment_mixing.py",
    "tfmagic.models": "test_models.py",
    "tfmagic.models.common": "test_models.py",
    "tfmagic.models.mobilenet": "test_models.py",
    "tfmagic.models.resnet": "test_models.py",
    "tfmagic.models.surgery": "test_surgery.py",
}
MODULES = [name for name in _modules_with_examples() if name not in RUN_ELSEWHERE]


def test_the_other_modules_examples_run_in_their_own_tests():
    tests_dir = os.path.dirname(__file__)
    for name, test_file in RUN_ELSEWHERE.items():
        with open(os.path.join(tests_dir, test_file)) as f:
            source = f.read()
        tested = set(re.findall(r"doctest\.testmod\((\w+)\)", source))
        for listed in re.findall(r"for module in \(([^)]*)\):\s*\n\s*.*doctest\.testmod\(module\)",
                                 source):
            tested.update(word.strip() for word in listed.split(","))
        assert name.rpartition(".")[2] in tested, (name, test_file, sorted(tested))


def test_the_package_has_examples():
    assert {"tfmagic.schedules", "tfmagic.registry", "tfmagic.wiring", "tfmagic.choices",
            "tfmagic.recipe"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has '>>> ' in its source but no doctest was found"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
