"""The checklist: train a baseline recipe and one-change trials, compare them, recommend.

- :mod:`tfmagic.checklist.trials`: the trial set (the article's 15 one-change trials and the
  extended ones), each a change of a few Recipe fields.
- :mod:`tfmagic.checklist.runner`: plans the runs and the rounds of seeds, resumable after a
  kill; :mod:`tfmagic.checklist.executors` carries the runs out, as local processes or as
  Ray tasks.
- :mod:`tfmagic.checklist.stats` and :mod:`tfmagic.checklist.summaries`: verdicts against the
  baseline over seeds; :mod:`tfmagic.checklist.best`: the winners merged into best.cfg;
  :mod:`tfmagic.checklist.report`: the report (report.md, summary.csv, report.png,
  curves.png, best.cfg).

The files of a checklist directory are named and read by :mod:`tfmagic.rundir`.
"""
