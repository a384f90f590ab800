"""Checkpoints and resumption, as a user meets them: `python -m
experiments.train` subprocesses that get killed, corrupted and re-run."""

import errno
import json
import os
import shutil

import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint._src.handlers import standard_checkpoint_handler as sch
import pytest

from fedrecon_jax import checkpoint, metrics_writer, server, tb_events
from fedrecon_jax import workdir
from fedrecon_jax.config import Config

from experiments.faults import compare
import tiny

# Tiny runs: 3 generator + 5 task rounds, checkpoints at 2, 4, 6, 8.
SCHEDULE = dict(gen_rounds=3, rounds=5, checkpoint_every=2, keep_checkpoints=3)
TOTAL_ROUNDS = 8
records, steps = tiny.records, tiny.steps


def train_cmd(workdir, *extra):
  return tiny.train_cmd(workdir, *extra, **SCHEDULE)


def train(env, workdir, *extra, check=True):
  return tiny.run(train_cmd(workdir, *extra), env, check=check)


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  """An uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  train(env, workdir)
  return workdir


def test_uninterrupted_run_layout(reference):
  got = records(reference)
  assert [r['round'] for r in got] == list(range(1, TOTAL_ROUNDS + 1))
  assert steps(reference) == [4, 6, 8]  # --keep_checkpoints=3
  assert os.path.exists(os.path.join(reference, 'summary.json'))
  assert any(n.startswith('events.out.tfevents')
             for n in os.listdir(reference))


# The default tier's short fault storm (test_fault_storm.py) kills a run in
# a checkpoint commit and a metrics line and compares every file: this
# longer check of one mid-run SIGKILL runs in the slow tier.
@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(env, reference,
                                                       tmp_path):
  workdir = str(tmp_path / 'killed')
  tiny.kill_after_a_checkpoint(train_cmd(workdir), env, workdir)
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  assert tiny.rounds_logged(workdir) < TOTAL_ROUNDS

  out = train(env, workdir).stdout
  assert 'round 1/' not in out, 'restarted instead of resuming'
  got = records(workdir)
  assert [r['round'] for r in got] == list(range(1, TOTAL_ROUNDS + 1))
  # Bitwise on CPU: same seed, same fold_in(key, round) keys, exact state.
  assert got[-1] == records(reference)[-1]
  assert got == records(reference)


def test_a_kill_while_deleting_an_old_step_leaves_nothing_unreadable(
    env, reference, tmp_path):
  """Saving round 8 drops step 2 (--keep_checkpoints=3). The process is
  SIGKILLed right after the first file of step 2 is removed (the fault
  storm's node loss, aimed at the deletion); a rerun must leave exactly the
  uninterrupted run's files: no half-deleted step among the checkpoints."""
  workdir_ = str(tmp_path / 'deleting')
  cmd = [tiny.sys.executable, '-m', 'experiments.fault_inject',
         *train_cmd(workdir_)[2:]]
  proc = tiny.run(cmd, {**env, 'FAULT_INJECT': '{"kill_deleting_step": 2}'},
                  check=False)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert tiny.rounds_logged(workdir_) == TOTAL_ROUNDS

  train(env, workdir_)
  got = compare.compare([(workdir_, reference)])
  assert compare.clean(got) and not got['problems'], got
  assert sorted(os.listdir(os.path.join(workdir_, 'checkpoints'))) == [
      '4', '6', '8']


def test_corrupt_newest_checkpoint_falls_back_to_previous(env, reference,
                                                          tmp_path):
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(reference, workdir)
  newest = steps(workdir)[-1]
  step_dir = os.path.join(workdir, 'checkpoints', str(newest))
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
  os.remove(os.path.join(workdir, 'summary.json'))

  proc = train(env, workdir)
  assert f'Skipping unreadable checkpoint {newest}' in proc.stderr
  # Resumed from the checkpoint before, so rounds after it ran again.
  assert f'round {newest}/{TOTAL_ROUNDS}' in proc.stdout
  assert f'round {newest - 2}/' not in proc.stdout
  # Nothing deleted: the bad step was moved aside, the run then re-saved it.
  assert os.path.isdir(os.path.join(workdir, 'checkpoints_corrupt',
                                    str(newest)))
  assert steps(workdir)[-1] == newest
  assert os.path.exists(os.path.join(workdir, 'summary.json'))
  assert records(workdir) == records(reference)


def test_changed_alpha_is_refused(env, reference, tmp_path):
  workdir = str(tmp_path / 'alpha')
  shutil.copytree(reference, workdir)
  before = open(os.path.join(workdir, 'metrics.jsonl')).read()
  proc = train(env, workdir, '--alpha=0.1', check=False)
  assert proc.returncode != 0
  assert '--alpha' in proc.stdout + proc.stderr
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == before


def test_read_metrics_skips_a_torn_last_line(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    f.write('{"round": 1, "a": 1.0}\n{"round": 2, "a": 2.0}\n{"round": 3, "a')
  assert [r['round'] for r in metrics_writer.read_metrics(path)] == [1, 2]


def test_truncate_metrics_drops_later_rounds_and_refills_lost_ones(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    f.write('{"round": 1, "a": 1.0}\n{"round": 3, "a": 3.0}\n'
            '{"round": 4, "a": 4.0}\n{"round": 5, "a')
  saved = [{'round': 1, 'a': -1.0}, {'round': 2, 'a': 2.0},
           {'round': 3, 'a': -3.0}]
  kept = metrics_writer.truncate_metrics(path, 3, saved)
  assert kept == [{'round': 1, 'a': 1.0}, {'round': 2, 'a': 2.0},
                  {'round': 3, 'a': 3.0}]
  assert metrics_writer.read_metrics(path) == kept


def test_check_compatible_lists_every_differing_flag():
  saved = Config(workdir='/a').to_dict()
  # Harmless changes (config.RESUMABLE_OVERRIDES) are allowed.
  checkpoint.check_compatible(saved, Config(workdir='/b', rounds=99))
  with pytest.raises(ValueError, match=r'--alpha .*--seed'):
    checkpoint.check_compatible(saved, Config(workdir='/a', alpha=0.1, seed=3))
  # A flag the checkpoint predates counts as its default.
  del saved['beta']
  checkpoint.check_compatible(saved, Config(workdir='/a'))


def test_metrics_writer_writes_jsonl_and_tensorboard(tmp_path):
  workdir = str(tmp_path)
  with metrics_writer.MetricsWriter(workdir) as w:
    w.write({'round': 1, 'stage': 2, 'ce': 0.5, 'f1_macro': 0.25})
    w.write({'round': 2, 'stage': 2, 'ce': 0.25})
  assert [r['round'] for r in metrics_writer.read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))] == [1, 2]
  scalars = tb_events.read_scalars(workdir)
  assert scalars[('f1_macro', 1)] == [0.25]
  assert scalars[('ce', 2)] == [0.25]
  assert not any(tag in ('round', 'stage') for tag, _ in scalars)


def test_a_sigkill_after_a_round_loses_none_of_its_tensorboard_scalars(
    tmp_path):
  """Each round's record is on disk before the next round (and before its
  checkpoint): tensorboardX's SummaryWriter (flush_secs=10) lost all 5."""
  code = ('import os, signal, sys\n'
          'from fedrecon_jax import metrics_writer\n'
          'w = metrics_writer.MetricsWriter(sys.argv[1])\n'
          'for r in range(1, 6):\n'
          '  w.write({"round": r, "stage": 1, "ce": r / 3})\n'
          'os.kill(os.getpid(), signal.SIGKILL)\n')
  proc = tiny.subprocess.run([tiny.sys.executable, '-c', code, str(tmp_path)],
                             cwd=tiny.REPO, check=False)
  assert proc.returncode == -9
  assert sorted(tb_events.read_scalars(str(tmp_path))) == [
      ('ce', r) for r in range(1, 6)]


@pytest.mark.parametrize('file', ['metrics', 'tensorboard'])
def test_a_full_disk_in_an_append_keeps_whole_rounds_and_says_so(
    tmp_path, monkeypatch, file):
  """ENOSPC halfway through round 3's line or TensorBoard record: the
  half is cut off, the error names the workdir and what is kept, and a
  writer resuming at round 2 (its checkpoint) writes the files an
  unfailed writer writes."""
  rounds = [{'round': r, 'stage': 1, 'ce': r / 3} for r in (1, 2, 3)]
  want = str(tmp_path / 'want')
  with metrics_writer.MetricsWriter(want) as w:
    for r in rounds:
      w.write(r)
  got = str(tmp_path / 'got')
  w = metrics_writer.MetricsWriter(got)
  for r in rounds[:2]:
    w.write(r)
  os.makedirs(os.path.join(got, 'checkpoints', '2'))
  tb_path = w._tb.path  # pylint: disable=protected-access
  sizes = {p: os.path.getsize(p) for p in (w.path, tb_path)}
  write_all = metrics_writer.write_all

  def full(fd, data):   # the disk fills halfway through `file`'s write
    if data.startswith(b'{') == (file == 'metrics'):
      write_all(fd, data[:len(data) // 2])
      raise OSError(errno.ENOSPC, 'No space left on device')
    write_all(fd, data)

  monkeypatch.setattr(metrics_writer, 'write_all', full)
  kept = '1-2' if file == 'metrics' else '1-3'
  with pytest.raises(workdir.WorkdirError, match=(
      rf'--workdir={got}: .*round 3 .*failed: \[Errno 28\] No space left on '
      rf'device\. Kept metrics.jsonl rounds {kept} and the checkpoints \[2\]; '
      're-running the command resumes')):
    w.write(rounds[2])
  monkeypatch.undo()
  # The failed write was cut off: whole lines and records only.
  failed = w.path if file == 'metrics' else tb_path
  assert os.path.getsize(failed) == sizes[failed]
  with metrics_writer.MetricsWriter(got, 2, rounds[:2]) as w:   # resumed
    w.write(rounds[2])
  assert records(got) == records(want)
  assert compare.tensorboard_differences(got, want) == []


@pytest.mark.parametrize('when', ['in_save', 'in_background'])
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch,
                                                        when):
  """A full disk while saving round 2 (raised by save(), or later by the
  background commit) is a WorkdirError naming what is kept; checkpoint 1
  stays readable."""
  cfg = Config(workdir=str(tmp_path), checkpoint_every=1, keep_checkpoints=1,
               rounds=5)
  state = server.ServerState({'w': jnp.ones(3)}, {'m': jnp.zeros(3)},
                             jnp.int32(0))
  ckpt = checkpoint.Checkpointer(cfg)
  assert ckpt.maybe_save(state, 1, metrics=[])
  ckpt.mngr.wait_until_finished()
  full = OSError(errno.ENOSPC, 'No space left on device')
  save = sch.StandardCheckpointHandler.async_save

  class Failed:
    def result(self, timeout=None):
      raise full

  async def failing_save(*args, **kwargs):
    if when == 'in_save':
      raise full
    return [*await save(*args, **kwargs), Failed()]

  monkeypatch.setattr(sch.StandardCheckpointHandler, 'async_save',
                      failing_save)
  with pytest.raises(workdir.WorkdirError, match=r'No space.*\[1\]'):
    ckpt.maybe_save(state, 2, metrics=[])
    ckpt.close()
  monkeypatch.undo()
  assert steps(str(tmp_path)) == [1]
  meta = ckpt.mngr.restore(1, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']
  assert meta['round'] == 1


@pytest.mark.slow   # two tiny runs as subprocesses each
@pytest.mark.parametrize('inject,failed,kept', [
    ({'enospc_at_round': 6}, 'writing a checkpoint failed',
     'Kept the earlier checkpoints [2, 4]'),
    ({'enospc_in_append_at_round': 5},
     'appending round 5 to metrics.jsonl failed',
     'Kept metrics.jsonl rounds 1-4 and the checkpoints [2, 4]'),
    ({'enospc_in_tensorboard_at_round': 5}, 'writing round 5 to ',
     'Kept metrics.jsonl rounds 1-5 and the checkpoints [2, 4]'),
], ids=['checkpoint_commit', 'metrics_append', 'tensorboard_write'])
def test_a_full_disk_stops_the_run_then_a_rerun_resumes_exactly(
    env, reference, tmp_path, inject, failed, kept):
  """The disk fills up halfway through a write (experiments.fault_inject):
  checkpoint 6's commit (its files in orbax's tmp folder), round 5's
  metrics line, or round 5's TensorBoard record. The run stops with an
  error naming the workdir and what it kept, and a re-run resumes from 4
  to the uninterrupted run's files, every one compared."""
  workdir_ = str(tmp_path / 'full')
  cmd = [tiny.sys.executable, '-m', 'experiments.fault_inject',
         *train_cmd(workdir_)[2:]]
  proc = tiny.run(cmd, {**env, 'FAULT_INJECT': json.dumps(inject)},
                  check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f'error: --workdir={workdir_}: {failed}' in proc.stderr, (
      proc.stderr[-3000:])
  assert '[Errno 28] No space left on device' in proc.stderr
  assert kept in proc.stderr, proc.stderr[-3000:]
  assert steps(workdir_) == [2, 4]
  assert not os.path.exists(os.path.join(workdir_, 'summary.json'))

  out = train(env, workdir_).stdout
  assert 'round 4/' not in out and 'round 5/' in out, out[-3000:]
  got = compare.compare([(workdir_, reference)])
  assert compare.clean(got) and not got['problems'], got
  if 'enospc_at_round' in inject:   # set aside, not deleted
    assert any(n.startswith('6.orbax-checkpoint-tmp') for n in os.listdir(
        os.path.join(workdir_, 'checkpoints_corrupt')))
