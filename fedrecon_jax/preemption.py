"""Stopping a run cleanly on SIGTERM / SIGINT, and the exit statuses that
tell a scheduler what happened.

Schedulers preempt with SIGTERM and a grace period (Kubernetes 30 s, SLURM
`--signal`, TPU maintenance events). The loop asks `StopSignal.requested(r)`
after every round; once it says yes the run saves a checkpoint of round r,
flushes metrics and raises `Preempted`, which the entry points turn into
EXIT_REQUEUE. Re-running the command resumes at round r + 1.

One process: plain Python handlers set a flag. Several processes
(jax.distributed): a signal reaches one host, but every host must save the
same round, so the decision is JAX's preemption sync point
(`multihost_utils.reached_preemption_sync_point`): JAX's coordination service
catches SIGTERM itself (a handler installed by jax.distributed.initialize),
tells every process, and they agree on the first round all can still reach.
A Python SIGTERM handler would replace JAX's, so there only SIGINT gets one,
which re-sends SIGTERM to this process for JAX to see.
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging

# sysexits.h EX_TEMPFAIL, "temporary failure, retry later": not 1 (an
# error: retrying will not help), not 128 + N (killed by signal N before
# saving). A wrapper requeues on it (SLURM: `scontrol requeue`; Kubernetes:
# podFailurePolicy onExitCodes [75] -> Ignore, so the retry is not counted as
# a failure).
EXIT_REQUEUE = 75
# The run stopped on non-finite params or all clients skipped: a result, not
# a failure to retry (the same flags diverge again); summary.json says where.
EXIT_DIVERGED = 3


class Preempted(Exception):
  """A stop signal arrived; the checkpoint of `round_` is saved."""

  def __init__(self, round_: int, signame: str):
    super().__init__(f'stopped by {signame} after round {round_}; its '
                     'checkpoint is saved. Re-run the same command to resume '
                     f'(exit status {EXIT_REQUEUE} = requeue).')
    self.round = round_


class StopSignal:
  """Context manager: handlers for SIGTERM / SIGINT while the loop runs."""

  def __init__(self):
    self.signame = None
    self._old = {}
    import jax  # pylint: disable=g-import-not-at-top
    # Sweeps and reports import this module for the exit codes: JAX only here.
    self._multi = jax.process_count() > 1

  def __enter__(self) -> 'StopSignal':
    signals = (signal.SIGINT,) if self._multi else (signal.SIGTERM,
                                                     signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
      signals = ()  # Python allows handlers in the main thread only
    for sig in signals:
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def _handle(self, signum, frame) -> None:
    del frame
    first = self.signame is None
    self.signame = signal.Signals(signum).name
    if signum == signal.SIGINT:
      # A second Ctrl-C aborts at once (no checkpoint of the round).
      signal.signal(signal.SIGINT, signal.default_int_handler)
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)   # to JAX's preemption notifier
    if first:
      logging.warning('%s: finishing this round, saving its checkpoint, '
                      'then exiting with status %d.', self.signame,
                      EXIT_REQUEUE)

  def requested(self, round_: int) -> bool:
    """True if the run must stop after `round_`. Every process must call it
    after every round (the sync point counts the calls)."""
    if not self._multi:
      return self.signame is not None
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      reached = multihost_utils.reached_preemption_sync_point(round_)
    except RuntimeError:  # jax_enable_preemption_service is off
      reached = False
    if reached:
      self.signame = self.signame or 'SIGTERM'
    return reached
