"""tfmagic-train: flags, usage errors that create nothing, help, re-runs of a finished run."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from absl import app, flags
from test_recipe import BAD_VALUES

from tfmagic._quiet_start import shown_at_level
from tfmagic.cli import parse_flags
from tfmagic.cli import train as cli
from tfmagic.recipe import Recipe, fields
from tfmagic.rundir import OutputDirError
from tfmagic.training import train

# Module fixtures (real runs) are shared by several tests: they run in one test process.
pytestmark = pytest.mark.xdist_group("cli")

BINARY = shutil.which("tfmagic-train", path=os.path.dirname(sys.executable)) or shutil.which(
    "tfmagic-train"
)


def _run_in_process(argv, capsys):
    """Run the absl app as the binary would, returning (exit code, stderr)."""
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as caught:
        app.run(cli.main, argv=["tfmagic-train", *argv])
    flags.FLAGS.unparse_flags()
    return caught.value.code, capsys.readouterr().err


def _run_binary(*argv, cwd):
    """The binary as a user runs it: TensorFlow's log level is not set."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [BINARY or sys.executable, *([] if BINARY else ["-m", "tfmagic.cli.train"]), *argv],
        cwd=cwd, capture_output=True, text=True, timeout=600, env=env,
    )


@pytest.mark.parametrize("field,value,words", BAD_VALUES)
def test_every_rule_is_a_usage_error_that_creates_nothing(field, value, words, tmp_path, capsys):
    out = tmp_path / "never"
    argv = [f"--{field}={value}"] + ([] if field == "output_dir" else [f"--output_dir={out}"])
    code, err = _run_in_process(argv, capsys)
    assert code != 0
    assert f"--{field}" in err or f"flag --{field}" in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_binary_bad_value_exit_code_and_message(tmp_path):
    proc = _run_binary("--lr=-0.5", "--output_dir=never", cwd=tmp_path)
    assert proc.returncode == 1
    assert "--lr=-0.5: must be > 0" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_flag_in_a_flagfile_is_named_with_the_file(tmp_path, capsys):
    inner = tmp_path / "inner.cfg"
    inner.write_text("--epochs=3\n--bogus_flag=1\n")
    outer = tmp_path / "outer.cfg"
    outer.write_text(f"--lr=0.1\n--flagfile={inner}\n")
    for argv, words in [([f"--flagfile={outer}"], f"'bogus_flag' (in --flagfile={inner})"),
                        (["--bogus_flag=1"], "Unknown command line flag 'bogus_flag'\n")]:
        flags.FLAGS.unparse_flags()
        with pytest.raises(SystemExit) as caught:
            parse_flags(["tfmagic-train", *argv])
        flags.FLAGS.unparse_flags()
        assert caught.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("FATAL Flags parsing error: Unknown command line flag")
        assert words in err and "--helpshort" in err


def test_helpfull_documents_every_flag(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")        # the width the binary wraps its help at in a pipe
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit):
        app.run(cli.main, argv=["tfmagic-train", "--helpfull"])
    flags.FLAGS.unparse_flags()
    stdout = capsys.readouterr().out
    for field in fields():
        shown = f"--[no]{field.name}:" if field.type is bool else f"--{field.name}:"
        assert shown in stdout, field.name
        assert field.metadata["help"].split(";")[0][:40] in stdout.replace("\n    ", " ")
    assert "--[no]overwrite" in stdout


# What TensorFlow 2.21 writes to stderr while it loads, whatever TF_CPP_MIN_LOG_LEVEL says
# (two copies of its logging library, each with absl's banner; the CPU-feature note continues
# on a second line), then a warning made the same shape and the error its native log writes
# at the first tensor on a machine without a GPU.
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = ("I0000 00:00:1796661762.640409   17409 port.cc:153] oneDNN custom operations are on."
          "\n")
CUDA = ("I0000 00:00:1796661762.640748   17409 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.\n")
FEATURES = ("I0000 00:00:1796664577.914854   23300 cpu_feature_guard.cc:227] This TensorFlow "
            "binary is optimized to use available CPU instructions in performance-critical "
            "operations.\nTo enable the following instructions: AVX2 AVX512F AVX512_VNNI "
            "AVX512_BF16 AVX512_FP16 AVX_VNNI FMA, in other operations, rebuild TensorFlow with "
            "the appropriate compiler flags.\n")
WARNING = ("W0000 00:00:1796661763.914854   17409 cpu_feature_guard.cc:227] This binary is "
           "optimized for some CPU instructions.\nTo enable the following instructions: AVX2 "
           "FMA, rebuild TensorFlow.\n")
ERROR = ("E0000 00:00:1796661764.100000   17409 cuda_platform.cc:51] failed call to cuInit: "
         "UNKNOWN ERROR (303)\n")
LOADING = BANNER + ONEDNN + CUDA + FEATURES + BANNER + ONEDNN + CUDA + WARNING + ERROR


@pytest.mark.parametrize("level,shown", [
    ("3", ""), ("2", ERROR), ("1", WARNING + ERROR), ("0", LOADING), ("debug", LOADING),
])
def test_what_tensorflow_writes_while_it_loads_is_shown_by_its_level(level, shown):
    assert shown_at_level(LOADING, level) == shown


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """A tfmagic-train run killed with SIGKILL after its first epoch, then the same command
    again, both by the binary: what the kill left and what the second run printed and wrote."""
    tmp = tmp_path_factory.mktemp("killed")
    # 40 steps an epoch: the three epochs after the first take seconds, so the kill below
    # lands before the last one ends even on a busy machine.
    flagfile = tmp / "kill.cfg"
    flagfile.write_text(
        "--train_subset=1000\n--validation_fraction=0\n--epochs=4\n--batch_size=25\n"
        "--model=resnet8\n--width=0.25\n--nose\n--augment=none\n--crop_scheme=none\n"
        "--output_dir=run\n--eval_batch_size=1000\n"
    )
    command = [BINARY or sys.executable, *([] if BINARY else ["-m", "tfmagic.cli.train"]),
               f"--flagfile={flagfile}"]
    history = tmp / "run" / "history.csv"
    process = subprocess.Popen(command, cwd=tmp, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (history.exists() and len(history.read_text().splitlines()) >= 2):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
        # The same run started again while the first one writes its directory.
        try:
            train(dataclasses.replace(Recipe.from_flagfile(str(flagfile)),
                                      output_dir=str(tmp / "run")), verbose=0)
            refused = None
        except OutputDirError as error:
            refused = str(error)
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    killed = {"result_exists": (tmp / "run" / "result.json").exists(),
              "finished": len(history.read_text().splitlines()) - 1,
              "pid": process.pid, "refused": refused,
              "lock": (tmp / "run" / ".lock").read_text()}
    again = _run_binary(f"--flagfile={flagfile}", cwd=tmp)
    result_file = tmp / "run" / "result.json"
    return {"dir": tmp, "flagfile": flagfile, "killed": killed, "again": again,
            "result": json.loads(result_file.read_text()) if result_file.exists() else None,
            "history": history.read_text()}


def test_binary_killed_with_sigkill_resumes_from_its_last_epoch(killed_then_resumed):
    run = killed_then_resumed
    assert not run["killed"]["result_exists"]
    finished = run["killed"]["finished"]
    assert 1 <= finished < 4

    again = run["again"]
    assert again.returncode == 0, again.stderr
    result = run["result"]
    assert finished - 1 <= result["resumed_from_epoch"] <= finished
    assert result["epochs_run"] == 4
    epochs = [line.split(",")[0] for line in run["history"].splitlines()[1:]]
    assert epochs == ["0", "1", "2", "3"]


def test_a_run_directory_is_locked_while_written_and_a_killed_runs_lock_is_taken_over(
        killed_then_resumed):
    killed = killed_then_resumed["killed"]
    run = killed_then_resumed["dir"] / "run"
    assert killed["refused"] == (
        f"output_dir={str(run)!r} is in use by another run (process {killed['pid']}); wait for "
        "it to end, or choose another output_dir")
    # The killed run's lock file stayed, with its pid; the run started again took it over,
    # finished, and removed it.
    assert killed["lock"] == f"{killed['pid']}\n"
    assert killed_then_resumed["again"].returncode == 0
    assert not (run / ".lock").exists()


def test_binary_trains_then_refuses_a_finished_run(killed_then_resumed, tmp_path, capsys,
                                                   monkeypatch):
    # The binary's run that trained the killed run to its end.
    first = killed_then_resumed["again"]
    assert first.returncode == 0, first.stderr
    for noise in ("I0000", "E0000", "W0000", "cuInit", "absl::InitializeLog"):
        assert noise not in first.stderr + first.stdout, noise
    devices = first.stdout.splitlines()[0]
    assert devices.startswith("tfmagic: resnet8 on fashion_mnist, "), devices
    assert ("CPU only" in devices) != ("GPU" in devices), devices
    summary = first.stdout.strip().splitlines()[-1]
    result = killed_then_resumed["result"]
    assert f"test accuracy {result['test_accuracy']:.4f}" in summary

    # Refused, then replaced, by the binary's main() in this process, on a copy of the
    # finished run (the binary's own exit status 2 is checked by
    # test_binary_unwritable_output_dir_exits_2_naming_it).
    shutil.copytree(killed_then_resumed["dir"] / "run", tmp_path / "run")
    flagfile = shutil.copy(killed_then_resumed["flagfile"], tmp_path)
    stamp = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    code, err = _run_in_process([f"--flagfile={flagfile}"], capsys)
    assert code == 2
    assert "finished run" in err and "--overwrite" in err
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp

    code, err = _run_in_process(
        [f"--flagfile={flagfile}", "--overwrite", "--epochs=1", "--train_subset=300"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["epochs_run"] == 1


@pytest.mark.parametrize("flag,extra,written", [
    ("--plot_schedules_only", "--epochs=4", "schedules.png"),
    ("--preview_augment_only", "--cutout=0.3", "augment_preview.png"),
])
def test_only_flags_write_their_picture_and_do_not_train(flag, extra, written, tmp_path,
                                                         capsys):
    out = tmp_path / "picture"
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as caught:
        app.run(cli.main, argv=["tfmagic-train", flag, "--train_subset=500", extra,
                                f"--output_dir={out}"])
    flags.FLAGS.unparse_flags()
    assert caught.value.code == 0
    assert sorted(p.name for p in out.iterdir()) == [written]
    assert f"-> {out / written}" in capsys.readouterr().out


@pytest.mark.parametrize("output_dir,words", [
    ("/proc/tfmagic-run", "its parent /proc cannot be written to"),
    ("cfg/run", "lies under"),
])
def test_unwritable_output_dir_exits_2_naming_it(output_dir, words, tmp_path, capsys,
                                                 monkeypatch):
    (tmp_path / "cfg").write_text("a file where a directory would go")
    monkeypatch.chdir(tmp_path)
    code, err = _run_in_process([f"--output_dir={output_dir}", "--train_subset=300"], capsys)
    assert code == 2, err
    assert f"tfmagic-train: output_dir='{output_dir}' cannot be used: " in err
    assert words in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg"]


def test_binary_unwritable_output_dir_exits_2_naming_it(tmp_path):
    (tmp_path / "cfg").write_text("a file where a directory would go")
    proc = _run_binary("--output_dir=cfg/run", "--train_subset=300", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "tfmagic-train: output_dir='cfg/run' cannot be used: " in proc.stderr
    assert "lies under" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg"]


def test_hand_edited_recipe_file_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.cfg").write_text("--epochs=3\n--bogus_flag=1\n")
    monkeypatch.chdir(tmp_path)
    code, err = _run_in_process(["--output_dir=run", "--train_subset=300"], capsys)
    assert code == 2, err
    assert "run/recipe.cfg" in err and "bogus_flag" in err
    assert "Traceback" not in err
