"""`python -m experiments.paper`: see experiments/paper/run.py."""

from absl import app

from experiments.paper import run

if __name__ == '__main__':
  app.run(run.main)
