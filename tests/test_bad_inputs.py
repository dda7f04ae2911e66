"""The table of bad inputs in BUILD_NOTES.md, run row by row through tfmagic-train's main."""

import os
import pathlib
import re
import shlex

import numpy as np
import pytest
from absl import app, flags
from PIL import Image

from tfmagic.cli import train as cli

NOTES = pathlib.Path(__file__).parent.parent / "BUILD_NOTES.md"


def _rows():
    text = NOTES.read_text()
    table = text.split("<!-- bad-inputs:start -->")[1].split("<!-- bad-inputs:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        arguments, code, message = (cell.strip().strip("`") for cell in line.strip("|").split("|"))
        rows.append(pytest.param(arguments, int(code), message, id=arguments))
    return rows


def _folder(root, counts, bad=()):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    for path, payload in bad:
        (root / path).write_bytes(payload)
    return root


@pytest.fixture
def paths(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    corrupt = _folder(made / "corrupt", {"cat": 3, "dog": 3})
    good_png = (corrupt / "cat" / "0.png").read_bytes()
    for path, payload in (("cat/empty.jpg", b""), ("dog/notes.png", b"text"),
                          ("dog/cut.png", good_png[:60])):
        (corrupt / path).write_bytes(payload)
    (made / "a_file").write_text("a file")
    (made / "edited").mkdir()
    (made / "edited" / "recipe.cfg").write_text("--epochs=3\n--bogus_flag=1\n")
    (made / "finished").mkdir()
    (made / "finished" / "result.json").write_text("{}\n")
    (made / "empty_class" / "fish").mkdir(parents=True)
    return {
        "one_class": _folder(made / "one_class", {"cat": 2}),
        "empty_class": _folder(made / "empty_class", {"cat": 2, "dog": 2}),
        "corrupt": corrupt,
        "a_file": made / "a_file",
        "edited": made / "edited",
        "finished": made / "finished",
    }


@pytest.mark.parametrize("arguments,code,message", _rows())
def test_bad_input_gets_what_build_notes_says(arguments, code, message, paths, tmp_path, capsys):
    before = {p for p in tmp_path.rglob("*")}
    argv = [part.format(**paths) for part in shlex.split(arguments)]
    if not any(a.startswith("--output_dir") for a in argv):
        argv.append(f"--output_dir={tmp_path / 'never'}")
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as caught:
        app.run(cli.main, argv=["tfmagic-train", "--train_subset=6", "--epochs=2", *argv])
    flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err
    assert caught.value.code == code, err
    assert message in re.sub(r"\s+", " ", err), err
    assert "Traceback" not in err
    assert {p for p in tmp_path.rglob("*")} == before
