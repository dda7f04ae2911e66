"""The checklist: train a baseline recipe and one-change trials, compare them, recommend.

- :mod:`tfmagic.checklist.trials`: the trial set (the article's 15 one-change trials and the
  extended ones), each a change of a few Recipe fields.
- :mod:`tfmagic.checklist.runner`: runs the trials in separate processes (or as Ray tasks),
  resumable after a kill.
- :mod:`tfmagic.checklist.stats` and :mod:`tfmagic.checklist.report`: verdicts against the
  baseline over seeds, and the report (report.md, summary.csv, report.png, curves.png,
  best.cfg).
"""
