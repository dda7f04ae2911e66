"""The Colab notebooks: stored clean, with their badge, install cell and FAST parameter, and
each name they use from tfmagic checked; `pytest -m slow` runs them headless top to bottom
with FAST=1 (offline, so on Fashion-MNIST)."""

import ast
import importlib
import json
import re
import types
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_quickstart.ipynb", "02_checklist.ipynb", "03_upgrade_your_model.ipynb")
REPOSITORY = re.search(r'Repository = "https://github.com/([^"]+)"',
                       (ROOT / "pyproject.toml").read_text()).group(1)


def _read(name):
    notebook = nbformat.read(ROOT / "colab" / name, as_version=4)
    nbformat.validate(notebook)
    return notebook


def _code(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_colab_folder_holds_the_three_notebooks():
    assert sorted(p.name for p in (ROOT / "colab").iterdir()) == list(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
    for cell in _code(_read(name)):
        assert cell.outputs == [], f"{name} is stored with outputs: clear them"
        assert cell.execution_count is None, f"{name} is stored with execution counts"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_badge_install_cell_and_fast_parameter(name):
    notebook = _read(name)
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    assert (f"(https://colab.research.google.com/github/{REPOSITORY}/blob/main/colab/{name})"
            in first.source)
    setup = _code(notebook)[0].source
    assert setup.startswith("FAST = 0")
    assert f"git+https://github.com/{REPOSITORY}" in setup
    assert 'list_physical_devices("GPU")' in setup
    readme = (ROOT / "README.md").read_text()
    assert (f"(https://colab.research.google.com/github/{REPOSITORY}/blob/main/colab/{name})"
            in readme)


def _execute(name, tmp_path, report):
    """Run the notebook with FAST = 1 in tmp_path, then a cell printing `report` (an
    expression over the notebook's variables) as JSON.

    Returns: that report, the printed text, and the number of images each code cell showed.
    """
    notebook = _read(name)
    setup = _code(notebook)[0]
    setup.source = setup.source.replace("FAST = 0", "FAST = 1", 1)
    notebook.cells.append(nbformat.v4.new_code_cell(
        f"import json\nimport os\nprint('REPORT ' + json.dumps({report}))"))
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(output.get("text", "") for cell in _code(notebook)
                     for output in cell.outputs if output.output_type == "stream")
    images = [sum("image/png" in output.get("data", {}) for output in cell.outputs)
              for cell in _code(notebook)]
    line = next(line for line in text.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT ")), text, images


def _tfmagic_names(source):
    """The tfmagic names that `source` uses: (module, attribute path) for each `from tfmagic...
    import name` and each attribute read from a tfmagic module it imported."""
    tree = ast.parse(source)
    modules, used = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tfmagic":
                    modules[alias.asname or "tfmagic"] = alias.name if alias.asname else "tfmagic"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfmagic"):
            for alias in node.names:
                if _module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                else:
                    used.append((node.module, [alias.name]))
    for node in ast.walk(tree):
        path = []
        while isinstance(node, ast.Attribute):
            path.insert(0, node.attr)
            node = node.value
        if path and isinstance(node, ast.Name) and node.id in modules:
            used.append((modules[node.id], path))
    return used


def _module(name):
    """The module `name`, or None where there is none."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


def _missing(used):
    """The names of `used` (as `_tfmagic_names` gives them) that tfmagic does not have."""
    missing = []
    for module, path in used:
        value = importlib.import_module(module)
        for i, attribute in enumerate(path):
            if isinstance(value, types.ModuleType) and not hasattr(value, attribute):
                value = _module(f"{value.__name__}.{attribute}")   # a submodule not yet imported
            else:
                value = getattr(value, attribute, None)
            if value is None:
                missing.append(".".join([module, *path[:i + 1]]))
                break
    return missing


def test_a_missing_tfmagic_name_is_found():
    used = _tfmagic_names("import tfmagic\nfrom tfmagic import data\nfrom tfmagic.losses import "
                          "Nope\ndata.load\ndata.nope\ntfmagic.layers.SqueezeExcite\n")
    assert _missing(used) == ["tfmagic.losses.Nope", "tfmagic.data.nope"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_cell_parses_and_every_tfmagic_name_it_uses_exists(name):
    """Without running the notebook (the default run executes none: `pytest -m slow` does):
    each code cell is valid Python and each tfmagic name it reads is there."""
    cells = [cell.source for cell in _code(_read(name))]
    for source in cells:
        ast.parse(source)
    used = _tfmagic_names("\n".join(cells))          # a name imported in one cell, read in later
    assert used, f"{name} uses no tfmagic name"
    assert _missing(used) == []


@pytest.mark.slow
def test_quickstart_trains_with_fit_and_shows_the_schedule_and_the_augmentation(tmp_path):
    found, text, images = _execute("01_quickstart.ipynb", tmp_path, """{
        "accuracy": float(test_accuracy), "epochs": len(history.history["loss"]),
        "se": se_blocks, "lr_peak": float(max(lr(np.arange(total_steps))))}""")
    print(f"quickstart (FAST): test accuracy {found['accuracy']:.4f}")
    # The first cell says which devices train.
    assert re.search(r"^TensorFlow \S+, (\d+ GPU\(s\)|no GPU: training on the CPU)", text, re.M)
    # The augmentation preview, the schedules, the training curves.
    assert images == [0, 0, 1, 1, 0, 1, 0]
    assert found["epochs"] == 3
    assert found["se"] == 9
    assert found["lr_peak"] == pytest.approx(0.1, rel=1e-3)
    # 3 epochs of 3,000 augmented images: far above chance (0.1), far below a full run.
    assert found["accuracy"] > 0.4


@pytest.mark.slow
def test_checklist_runs_the_trials_shows_the_report_and_trains_best_cfg(tmp_path):
    found, text, images = _execute("02_checklist.ipynb", tmp_path, """{
        "dataset": DATASET, "completed": len(result.completed), "failed": len(result.failed),
        "trials": sorted(s.name for s in result.report.summaries),
        "files": all(os.path.exists(path) for path in result.report.paths),
        "best": [best_result.status, best_result.test_accuracy, best_result.output_dir],
        "baseline": baseline_accuracy}""")
    print(f"checklist (FAST): baseline {found['baseline']:.4f}, best.cfg {found['best'][1]:.4f}")
    assert "dataset: fashion_mnist" in text
    assert found["dataset"] == "fashion_mnist"
    assert (found["completed"], found["failed"]) == (4, 0)
    assert found["trials"] == ["baseline", "lr_cosine", "ls_0", "se_off"]
    assert found["files"]
    assert (tmp_path / "runs" / "checklist" / "report.md").exists()
    # report.png and curves.png shown under the report table.
    assert images[-3] == 2
    status, accuracy, output_dir = found["best"]
    assert status == "completed"
    assert output_dir == str(tmp_path / "runs" / "best")
    assert accuracy > 0.4 and found["baseline"] > 0.4


@pytest.mark.slow
def test_upgrade_adds_se_and_leaky_relu_to_mobilenet_v2_and_trains_both(tmp_path):
    found, text, _ = _execute("03_upgrade_your_model.ipynb", tmp_path, """{
        "added_se": added_se, "replaced": replaced_activations, "same": same,
        "params": [before.count_params(), after.count_params()],
        "accuracies": [results["before"][0], results["after"][0]]}""")
    print(f"upgrade (FAST): {found}")
    assert "dataset: fashion_mnist" in text
    assert (found["added_se"], found["replaced"], found["same"]) == (17, 5, True)
    assert found["params"][1] > found["params"][0]
    assert "| before |" in text and "| after |" in text
    # 3 epochs of 2,000 images from scratch: well above chance (0.1) for both.
    assert min(found["accuracies"]) > 0.3
