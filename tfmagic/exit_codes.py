"""Exit statuses of tfmagic's binaries, in one place.

tfmagic-train, tfmagic-checklist and tfmagic-data return them, and the checklist runner reads
them back from the training processes it starts. `tfmagic.cli` re-exports them.
"""

EXIT_OK = 0
# A bad flag value (absl's usage error), or an error nobody caught (Python's status for it).
EXIT_ERROR = 1
# tfmagic-train: the output directory cannot be written to, holds a run that must not be
# touched, is in use by another run, or the disk filled up; tfmagic-checklist: --out cannot be
# written to, holds a checklist of another baseline or is in use; tfmagic-data: the disk
# filled up.
EXIT_OUTPUT_DIR = 2
# tfmagic-train: the run diverged (recorded in result.json).
EXIT_DIVERGED = 3
# tfmagic-checklist: some runs failed (see report.md).
EXIT_RUNS_FAILED = 3
# tfmagic-train: the pretrained weights asked for cannot be had (offline, say).
EXIT_NO_WEIGHTS = 4
