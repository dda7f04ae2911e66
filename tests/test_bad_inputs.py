"""The table of bad inputs in BUILD_NOTES.md, run row by row through tfmagic-train's main (a
row that starts with tfmagic-data through that binary)."""

import contextlib
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags
from disks import mount_tmpfs
from PIL import Image

from tfmagic import data, rundir
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


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
    """Shards that the rows only read, written once: ``truncated`` (one shard cut inside its
    last record) and ``incomplete`` (a numbered set without its second member)."""
    made = tmp_path_factory.mktemp("shards")
    to_shard = _folder(made / "to_shard", {"cat": 4, "dog": 4})
    truncated, incomplete = made / "truncated", made / "incomplete"
    data.write_tfrecords(f"folder:{to_shard}", str(truncated))
    shard = next(truncated.glob("train-*.tfrecord"))
    shard.write_bytes(shard.read_bytes()[:-100])
    data.write_tfrecords(f"folder:{to_shard}", str(incomplete), shard_bytes=8000)
    sorted(incomplete.glob("train-*.tfrecord"))[1].unlink()          # of 3 or more
    return {"truncated": truncated, "incomplete": incomplete}


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A 64 KiB tmpfs, filled up; or why there is none (mounting needs the privilege)."""
    where = tmp_path_factory.mktemp("full_disk")
    why = mount_tmpfs(where, "64k")
    if why:
        yield None, why
        return
    with open(where / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)
    yield where, None
    subprocess.run(["umount", str(where)], check=False)


@pytest.fixture
def paths(tmp_path, shard_sets, full_disk):
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
    dangling = _folder(made / "dangling", {"cat": 2, "dog": 2})
    (dangling / "dog" / "gone.png").symlink_to(made / "nowhere.png")
    looped = _folder(made / "looped", {"cat": 2, "dog": 2})
    (looped / "cat" / "a.png").symlink_to(looped / "cat" / "b.png")
    (looped / "cat" / "b.png").symlink_to(looped / "cat" / "a.png")
    broken_class = _folder(made / "broken_class", {"cat": 2, "dog": 2})
    (broken_class / "fish").symlink_to(made / "no_fish")
    # In use: its lock is held, as a run writing it holds it (flock: a second open of the lock
    # file, in this process too, is refused).
    in_use = made / "in_use"
    with rundir.exclusive(str(in_use), RuntimeError):
        yield {
            **shard_sets,
            "full_disk": full_disk[0],
            "good": _folder(made / "good", {"cat": 6, "dog": 6}),
            "in_use": in_use,
            "dangling": dangling,
            "looped": looped,
            "broken_class": broken_class,
            "one_class": _folder(made / "one_class", {"cat": 2}),
            "empty_class": _folder(made / "empty_class", {"cat": 2, "dog": 2}),
            "corrupt": corrupt,
            "a_file": made / "a_file",
            "edited": made / "edited",
            "finished": made / "finished",
        }


@pytest.mark.parametrize("arguments,code,message", _rows())
def test_bad_input_gets_what_build_notes_says(arguments, code, message, paths, full_disk,
                                               tmp_path, capsys):
    if "{full_disk}" in arguments and paths["full_disk"] is None:
        pytest.skip(f"a full disk needs a small tmpfs, which cannot be mounted here "
                    f"({full_disk[1]})")
    before = {p for p in tmp_path.rglob("*")}
    argv = [part.format(**paths) for part in shlex.split(arguments)]
    if not any(a.startswith("--output_dir") for a in argv):
        argv.append(f"--output_dir={tmp_path / 'never'}")
    if argv[0] == "tfmagic-data":            # its flags clash with tfmagic-train's in one process
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "tfmagic-data"),
                               *argv[1:]], capture_output=True, text=True, timeout=300)
        exit_code, err = done.returncode, done.stderr
    else:
        flags.FLAGS.unparse_flags()
        with pytest.raises(SystemExit) as caught:
            app.run(cli.main, argv=["tfmagic-train", "--train_subset=6", "--epochs=2", *argv])
        flags.FLAGS.unparse_flags()
        exit_code, err = caught.value.code, capsys.readouterr().err
    assert exit_code == code, err
    assert message in re.sub(r"\s+", " ", err), err
    assert "Traceback" not in err
    assert {p for p in tmp_path.rglob("*")} == before
