"""A DP run killed and resumed ends exactly where an uninterrupted one
does: the adaptive clip (ServerState.dp, in every checkpoint), the Poisson
cohorts and the per-round epsilon (privacy.epsilon_after's running PLD,
rebuilt from scratch by the resumed process) included."""

import pytest

import tiny

# zero_fill (one stage) with the FedAvg server: no server optimizer state,
# so only the DP state tells the loop a restored stage is under way.
SCHEDULE = dict(method='zero_fill', rounds=8, checkpoint_every=2,
                keep_checkpoints=3, server_opt='fedavg',
                client_sampling='poisson', dp_clip=0.5,
                dp_noise_multiplier=0.5, dp_clip_lr=0.3,
                dp_target_quantile=0.3, dp_clip_count_stddev=0.5)


# A whole DP run killed and resumed in subprocesses (~40-80 s): slow; the
# default tier's storm and resume tests kill and resume the same loop.
@pytest.mark.slow
def test_dp_run_killed_and_resumed_matches_uninterrupted(env, tmp_path):
  reference = str(tmp_path / 'reference')
  tiny.run(tiny.train_cmd(reference, **SCHEDULE), env)
  want = tiny.records(reference)
  clips = [r['dp_clip'] for r in want]
  assert clips[0] == 0.5 and len(set(clips)) == len(clips)   # it adapts
  # Values computed from the cohort without noise are marked.
  for r in want:
    assert not {'ce', 'participants', 'skipped_clients'} & set(r)
    assert 'nonprivate/ce' in r and 'nonprivate/participants' in r
  assert all(a['epsilon'] < b['epsilon'] for a, b in zip(want, want[1:]))

  workdir = str(tmp_path / 'killed')
  tiny.kill_after_a_checkpoint(tiny.train_cmd(workdir, **SCHEDULE), env,
                              workdir)
  assert tiny.rounds_logged(workdir) < 8
  out = tiny.run(tiny.train_cmd(workdir, **SCHEDULE), env).stdout
  assert 'round 1/' not in out, 'restarted instead of resuming'
  assert tiny.records(workdir) == want
