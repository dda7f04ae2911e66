"""Shared by the checklist tests: which warm worker trained a run, read from its log."""

import re
from pathlib import Path

_HEADER = re.compile(r"tfmagic worker (\d+): run (\d+) of this process")


def trained_by(log_file) -> tuple[str, str]:
    """(the worker's pid, the run's number in that worker) from the first line of a run's log
    (`tfmagic.checklist.worker`)."""
    return _HEADER.match(Path(log_file).read_text()).groups()
