"""The fault storm (experiments.fault_storm is its command), one job a module:

  targets.py  what is stormed: a run, a grouped sweep, a 2-process run, two
              sweep shards on one root (commands, workdirs, finished);
  live.py     a target's processes during a pass: (re)starts, exit
              statuses, the rounds each has printed (what faults aim by);
  kinds.py    the fault kinds, how each is aimed, the path each took;
  compare.py  every file a run writes against an uninterrupted run's;
  storm.py    a seeded part: passes until each kind has its counted faults;
  page.py     the parts' JSON added up into the results page.
"""
