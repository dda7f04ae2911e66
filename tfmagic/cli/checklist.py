"""tfmagic-checklist: train the baseline and the checklist's trials, then report.

The baseline is the Recipe made from the flags, exactly as for tfmagic-train: a flagfile
and any flag after it (see --helpfull). A quick checklist on 2 CPU cores:

    tfmagic-checklist --flagfile=flags/quickstart.cfg --out=runs/checklist
    tfmagic-checklist --flagfile=flags/quickstart.cfg --epochs=1 --train_subset=1500 \\
        --out=runs/quick --workers=2

Verdicts and best.cfg are chosen on the validation split; --seeds=auto (the default) gives
undecided trials more seeds. Running the same command again continues an interrupted
checklist; finished runs are kept. --print_commands prints the first round of seeds only
(2 per trial with --seeds=auto: more can only be chosen from results).
The report (report.md, summary.csv, report.png, curves.png, best.cfg) is written into --out.

Exit status: 0 every run completed or was skipped with a reason; 1 a bad flag value; 2 --out
cannot be written to, holds a checklist of another baseline or is in use; 3 some runs failed
(see report.md).
"""

import sys

from absl import app, flags

from tfmagic import recipe as recipe_lib
from tfmagic.checklist import runner, stats, trials
from tfmagic.cli import parse_flags, recipe_from_flags
from tfmagic.exit_codes import EXIT_OK, EXIT_OUTPUT_DIR, EXIT_RUNS_FAILED

FLAGS = flags.FLAGS
recipe_lib.define_flags(FLAGS)
flags.DEFINE_string("out", None, "Directory of the checklist: runs, logs and the report; "
                    "default: the baseline's --output_dir followed by '-checklist'.")
flags.DEFINE_integer("workers", None, "Runs at a time (local runner); default one per GPU, "
                     "else 1. On CPU the cores are shared out between the workers.", lower_bound=1)
flags.DEFINE_string("seeds", "auto", "'auto': every trial and the baseline start with 2 "
                    "seeds, and a trial whose verdict is still undecided but likely to be "
                    "decided within --max_seeds gets its next seed (with the baseline's of "
                    "the same index), closest to deciding first. Or N: N runs per trial. "
                    "Seeds are seed, seed+1, ...")
flags.DEFINE_float("min_effect", 100 * stats.MIN_EFFECT, "The smallest difference in "
                   "validation accuracy worth deciding, in percentage points: a verdict is "
                   "decided when it is better or worse, or when its interval lies within "
                   "+-min_effect.", lower_bound=0.0)
flags.DEFINE_integer("max_seeds", runner.MAX_SEEDS, "With --seeds=auto: the most seeds a "
                     "trial (and the baseline) gets.", lower_bound=runner.FIRST_SEEDS)
flags.DEFINE_list("trials", None, "Only these trials (comma-separated names); default all.")
flags.DEFINE_bool("extended", False, "Add the extended trials: "
                  f"{trials.EXTENDED_TRIALS.help_text()}.")
flags.DEFINE_bool("confirm", False, "Afterwards train best.cfg and its leave-one-out variants, "
                  "to check that the winning tricks combine.")
flags.DEFINE_integer("gpus_per_trial", 1, "GPUs each run gets (the recipe's strategy=auto "
                     "mirrors over them); workers get disjoint sets.", lower_bound=1)
flags.DEFINE_enum("runner", "local", ["local", "ray"], "Run the trials as local processes or "
                  "as tasks on a Ray cluster (pip install 'tfmagic[ray]').")
flags.DEFINE_integer("runs_per_worker", runner.RUNS_PER_WORKER, "The runs a worker process "
                     "trains one after another, loading TensorFlow once, before a new one "
                     "replaces it; 1 for a fresh process per run.", lower_bound=1)
flags.DEFINE_string("ray_address", None, "Address of an existing Ray cluster (runner=ray); "
                    "default: start or join a local one.")
flags.DEFINE_bool("print_commands", False, "Write the flagfiles and print one tfmagic-train "
                  "command per run (for SLURM or Kubernetes job arrays), without running.")
flags.DEFINE_bool("report_only", False, "Build the report from the run directories that exist "
                  "in --out, without running anything.")
flags.DEFINE_bool("best_from_incomplete", False, "With --report_only: write best.cfg even when "
                  "some planned runs have no result (by default it is left as it was).")


def _seeds(text: str) -> int | str:
    if text.strip() == runner.AUTO:
        return runner.AUTO
    refused = app.UsageError(f"--seeds={text} is not allowed: 'auto' or an integer >= 1")
    try:
        seeds = int(text)
    except ValueError:
        raise refused from None
    if seeds < 1:
        raise refused
    return seeds


def main(argv: list[str]) -> int:
    baseline = recipe_from_flags(argv, FLAGS)

    from tfmagic.checklist import report

    out = FLAGS.out or baseline.output_dir.rstrip("/") + "-checklist"
    seeds = _seeds(FLAGS.seeds)
    try:
        if FLAGS.report_only:
            written = report.write_report(out, best_from_incomplete=FLAGS.best_from_incomplete)
            print(f"report -> {written.report_md}")
            if written.incomplete:
                print(f"tfmagic-checklist: {written.incomplete}; best.cfg "
                      + ("written all the same" if written.best_cfg else
                         "not written (--best_from_incomplete writes it)"), file=sys.stderr)
            return EXIT_OK
        runner.check_seeds(seeds, FLAGS.min_effect / 100, FLAGS.max_seeds)
        if FLAGS.print_commands:
            first = runner.FIRST_SEEDS if seeds == runner.AUTO else seeds
            baseline, notes = runner.with_validation(baseline)
            jobs, skipped = runner.plan(baseline, out, seeds=first,
                                        trials=FLAGS.trials, extended=FLAGS.extended)
            runner.write_commands(baseline, out, jobs, skipped, first, notes)
            print("\n".join(runner.commands(jobs)))
            return EXIT_OK
        result = runner.run(
            baseline, out, workers=FLAGS.workers, seeds=seeds,
            min_effect=FLAGS.min_effect / 100, max_seeds=FLAGS.max_seeds, trials=FLAGS.trials,
            extended=FLAGS.extended, confirm=FLAGS.confirm, runner=FLAGS.runner,
            ray_address=FLAGS.ray_address, gpus_per_trial=FLAGS.gpus_per_trial,
            runs_per_worker=FLAGS.runs_per_worker,
        )
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    except (runner.ChecklistError, FileNotFoundError) as error:
        print(f"tfmagic-checklist: {error}", file=sys.stderr)
        return EXIT_OUTPUT_DIR
    return EXIT_RUNS_FAILED if result.failed else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
