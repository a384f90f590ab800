"""A run's settings: each field, its help, and the checks it needs alone.

`experiments/config_flags.py` turns every field of `Config` into an absl
flag of the same name (same default, same help), so a field added here is a
flag there.
Plain settings: no registry, no JAX (workdir.py and grid.py read them
without either). What the settings make of a run (the method and its
generator, the stages, each stage's plan, DP on or off, the cohort) and the
flag choices and checks that read the registries are `recipe.Recipe`'s.
A method's own knobs sit in its section (`FedReconSettings`,
`DittoSettings`, `UnimodalSettings`), which Config flattens into flags of
the same names, and which the method declares it reads (`Method.settings`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

TASK_ENCODER_WEIGHTS = ('seen', 'present')

# Numeric settings that enter the round programs as traced values, not
# constants (hparams.Hparams, whose fields these are): runs that differ only
# in these (and the seed, missing_rate, alpha) share one compiled program,
# and a group of them runs as one (rounds.make_round's runs axis). FedProx's
# term is compiled in only when fedprox_mu > 0, so that sign is part of the
# program (`recipe.Recipe.program_key`).
HPARAMS = ('client_lr', 'gen_lr', 'momentum', 'weight_decay', 'clip_norm',
           'fedprox_mu', 'server_lr', 'gen_server_lr', 'server_eps',
           'server_b1', 'server_b2', 'beta', 'match_weight', 'dp_clip',
           'dp_noise_multiplier', 'dp_target_quantile', 'dp_clip_lr',
           'dp_clip_count_stddev', 'dp_group_count_multiplier')

# What runs that share one program may differ in: HPARAMS, and settings
# that change only the data a run's clients hold (its partition, padded to
# the group's largest client) or its keys.
PER_RUN_FIELDS = HPARAMS + ('seed', 'missing_rate', 'alpha', 'workdir',
                             'dp_delta', 'dp_target_epsilon',
                             'dp_accountant', 'dp_log_nonprivate')

# Fields whose change on resume is harmless (they do not define the experiment).
RESUMABLE_OVERRIDES = ('rounds', 'workdir', 'data_dir', 'manual_dir',
                       'eval_every', 'checkpoint_every', 'keep_checkpoints',
                       'num_devices', 'clients_per_device',
                       'memory_fraction', 'device_memory_gb', 'distributed',
                       'compilation_cache',
                       'coordinator_address', 'num_processes', 'process_id')


def _f(default: Any, help_: str, **choices):
  return dataclasses.field(default=default, metadata={'help': help_, **choices})


@dataclasses.dataclass(frozen=True)
class FedReconSettings:
  """Knobs of FedRecon's methods (methods/fedrecon.py, and ditto on it)."""
  # Choices: the generator registry's kinds without mappings
  # (recipe.CHOICES).
  joint_posterior: str = _f('poe', 'Generator of fedrecon_no_map.')
  train_mapping_in_stage2: bool = _f(False, 'Keep training T(n<-m) with '
                                     'L_match during the task stage.')


@dataclasses.dataclass(frozen=True)
class DittoSettings(FedReconSettings):
  """Ditto's knob (methods/ditto.py), beside FedRecon's stages it runs."""
  ditto_lambda: float = _f(0.1, "Ditto's pull of each personal task model "
                           'towards the global one (--method=ditto).')


@dataclasses.dataclass(frozen=True)
class UnimodalSettings:
  """The unimodal baseline's knob (methods/unimodal.py)."""
  unimodal_modality: str = _f('best', "Modality of --method=unimodal, or "
                              "'best' (best ridge probe on train data).")


def section(cfg: Any, settings: type) -> Any:
  """cfg's fields of the section class `settings` (e.g. DittoSettings)."""
  return settings(**{f.name: getattr(cfg, f.name)
                     for f in dataclasses.fields(settings)})


@dataclasses.dataclass(frozen=True)
class Config(DittoSettings, UnimodalSettings):
  """A FedRecon run. Each field is also the absl flag `--<field>`; the
  methods' sections (the base classes) come first."""
  # Data and partition.
  dataset: str = _f('uci_multifeature', 'TFDS builder to train on.')
  data_dir: str = _f('', 'TFDS data_dir (default: $TFDS_DATA_DIR or '
                     '~/tensorflow_datasets).')
  manual_dir: str = _f('', 'Folder with user-provided files for polymnist / '
                       'uci_har / original UCI mfeat files; for files, the '
                       'folder of your arrays (WORKSPACE.md, "Your own data '
                       'with no code").')
  num_clients: int = _f(20, 'Population size K (ignored by --natural_split).')
  natural_split: bool = _f(False, 'One client per natural group (UCI-HAR '
                           'subject) instead of a Dirichlet split.')
  alpha: float = _f(5.0, 'Dirichlet label-skew concentration (>0; 0.1 high, '
                    '5.0 low imbalance).')
  missing_rate: float = _f(0.3, 'Probability that a client (or sample) lacks '
                           'each modality, in [0, 1).')
  per_sample_missing: bool = _f(False, 'Draw missingness per sample instead of '
                                'per client.')
  min_client_size: int = _f(5, 'Redraw the Dirichlet split until every client '
                            'has at least this many samples.')
  validation_fraction: float = _f(
      0.0, 'Share of each class of the training data held out as a '
      'validation set, which then replaces the test set in every evaluation '
      '(tune on it; the test set is scored once per final run). Drawn from '
      'its own fixed key: the same samples for every --seed. 0 = off, in '
      '[0, 1).')
  feature_stats: str = _f(
      'auto', 'Where the mean and std that standardise vector and sequence '
      "features come from: 'train' = the pooled training split (every "
      "client's data: outside a DP guarantee); 'test' = the held-out test "
      'split, which no client holds (public to the clients, so it costs '
      "them no privacy); 'auto' = 'test' under DP (--dp_clip > 0), else "
      "'train'. Images are scaled by 1/255 either way.",
      choices=('auto', 'train', 'test'))
  local_test_fraction: float = _f(
      0.0, "Share of each client's samples held out as its local test split "
      '(floor(fraction x its samples)), on which the global model '
      '(local_f1_macro) and personal models (personal_f1_macro; '
      '--method=ditto needs > 0) are scored. 0 = off, in [0, 1).')
  # Method.
  method: str = _f('fedrecon', 'Training method.')
  # Federated schedule.
  clients_per_round: int = _f(10, 'Cohort size sampled each round.')
  gen_rounds: int = _f(30, 'Stage-1 rounds (generator + mapping).')
  rounds: int = _f(50, 'Stage-2 rounds (task model).')
  local_epochs: int = _f(1, 'Local epochs per round.')
  batch_size: int = _f(16, 'Client batch size.')
  # Client optimisation (SGD with momentum, FedMultimodal defaults).
  client_lr: float = _f(0.05, 'Client learning rate, task stage.')
  gen_lr: float = _f(0.01, 'Client learning rate, generator stage.')
  momentum: float = _f(0.9, 'Client SGD momentum.')
  weight_decay: float = _f(1e-5, 'Client weight decay.')
  clip_norm: float = _f(10.0, 'Client gradient clipping (global norm).')
  fedprox_mu: float = _f(0.0, 'FedProx proximal coefficient (0 = off).')
  # Client-level DP-FedAvg (dp.py, privacy.py); on when dp_clip > 0.
  dp_clip: float = _f(0.0, 'DP-FedAvg: clip each client\'s update to this '
                      'L2 norm (0 = DP off; inf = no clipping).')
  dp_noise_multiplier: float = _f(0.0, 'DP-FedAvg: noise std on the sum of '
                                  'clipped updates, in units of --dp_clip.')
  dp_delta: float = _f(0.0, 'DP delta of the reported epsilon (0 = '
                       '1/K^1.1, K the number of clients).')
  dp_target_epsilon: float = _f(0.0, 'Refuse, before the first round, a DP '
                                'schedule whose final epsilon exceeds this '
                                '(0 = no limit).')
  # Client sampling, DP accounting, adaptive clipping and what a DP run
  # logs (issue 37; sampling.py, privacy.py, dp.py).
  client_sampling: str = _f(
      'fixed', "How each round's cohort is drawn: 'fixed' = "
      '--clients_per_round clients without replacement (DP accounted under '
      "replace-one); 'poisson' = each client independently with probability "
      'q = clients_per_round / K (DP accounted under add/remove, as Opacus '
      'and TFF report; the DP mean divides by the expected cohort qK).',
      choices=('fixed', 'poisson'))
  dp_accountant: str = _f(
      'pld', "dp_accounting's accountant of the reported epsilon: 'pld' "
      "(privacy loss distributions, tight; needs --client_sampling=poisson) "
      "or 'rdp' (Renyi DP, what the moments accountant became).",
      choices=('pld', 'rdp'))
  dp_clip_lr: float = _f(0.0, 'Adaptive clipping (Andrew et al. 2021): the '
                         'geometric learning rate eta of the clip towards '
                         '--dp_target_quantile of the update norms (0 = a '
                         'fixed clip --dp_clip; the paper uses 0.2).')
  dp_target_quantile: float = _f(0.5, 'Adaptive clipping: the share of '
                                 'clients whose update the clip should '
                                 'leave unclipped, in [0, 1].')
  dp_clip_count_stddev: float = _f(
      0.0, 'Adaptive clipping: std of the Gaussian noise on the count of '
      "clients within the clip (Andrew et al.'s sigma_b, e.g. expected "
      'cohort / 20); accounted with the update noise. Needs > 0 when '
      '--dp_clip_lr > 0 and --dp_noise_multiplier > 0.')
  dp_denominator: str = _f(
      'group', "What DP-FedAvg divides the noised sum by: 'group' = for each "
      'parameter group, the noised count of clients that trained it (a '
      "modality's networks, a mapping T(n<-m)); 'fixed' = the cohort size "
      "(McMahan et al. 2018's estimator), which shrinks the step of a group "
      'few clients train.', choices=('group', 'fixed'))
  dp_group_count_multiplier: float = _f(
      5.0, "--dp_denominator=group: noise std on the trainer counts, in "
      'units of their sensitivity sqrt(R)/2 (R classes of clients); '
      'accounted with the update noise. Needs > 0 when '
      '--dp_noise_multiplier > 0.')
  dp_log_nonprivate: bool = _f(
      True, 'Under DP, also log the round diagnostics computed from the '
      "cohort's data without noise (client loss terms, participant and "
      "skipped counts), each under 'nonprivate/' in metrics.jsonl: they are "
      'outside the DP guarantee. False drops them.')
  # Server.
  server_opt: str = _f('fedopt', 'Server aggregation.')
  server_optimizer: str = _f('adam', 'Server optimizer on the pseudo-gradient '
                             'for --server_opt=fedopt: adam|yogi|adagrad are '
                             'FedAdam/FedYogi/FedAdagrad (Reddi et al. 2021, '
                             'Alg. 2); sgdm is FedAvgM; optax_* are optax\'s '
                             'bias-corrected versions.')
  server_lr: float = _f(0.01, 'Server learning rate (fedopt).')
  server_eps: float = _f(1e-3, 'Adaptivity tau of adam/yogi/adagrad; '
                         'Reddi et al. 2021 use ~1e-3, not 1e-8.')
  server_b1: float = _f(0.9, 'First-moment decay b1 of the FedOpt server.')
  server_b2: float = _f(0.99, 'Second-moment decay b2 of FedAdam/FedYogi.')
  task_encoder_weights: str = _f(
      'seen', "Aggregation weight of a task encoder: 'seen' = every sample it "
      'was trained on (real, reconstructed or zero-filled: FedRecon, '
      "FedMultimodal); 'present' = only samples that really hold its modality "
      '(ablation).', choices=TASK_ENCODER_WEIGHTS)
  gen_server_lr: float = _f(0.01, 'Server learning rate (fedopt), generator '
                            'stage.')
  # Models.
  latent_dim: int = _f(32, 'MVAE latent size d.')
  gen_width: int = _f(256, 'Hidden width of the MVAE MLPs.')
  map_width: int = _f(256, 'Hidden width of T(n<-m) (the paper uses 512).')
  task_width: int = _f(64, 'Per-modality feature size of the task model.')
  beta: float = _f(1.0, 'KL weight of the generator ELBOs (MoPoE and MMVAE+ '
                   'use 2.5 on PolyMNIST; experiments/paper/table2.py sets it).')
  match_weight: float = _f(1.0, 'Weight of L_match.')
  cross_decoding: str = _f(
      'all', 'Cross-modal decoding of the generator objectives that read it '
      "(Generator.cross_decoding): 'all' decodes each source latent with "
      "every other present decoder; 'one' with one random target per source "
      "and step, "
      'scaled by M-1 (unbiased, M decodes instead of M(M-1); modalities of '
      'one kind and shape).',
      choices=('all', 'one'))
  gen_optimizer: str = _f('sgdm', "Client optimizer of the generator stage: "
                          "'sgdm' (SGD momentum, --momentum) or 'adam' (as "
                          'MoPoE / MMVAE+ / MMVM train image VAEs, with '
                          '--gen_lr=5e-4..1e-3). Its state restarts each '
                          'round.', choices=('sgdm', 'adam'))
  # Run.
  seed: int = _f(0, 'Seed of every random choice of the run.')
  eval_every: int = _f(5, 'Evaluate on the test set every N rounds (and at '
                       'the end of each stage).')
  workdir: str = _f('', 'Where metrics.jsonl, summary.json and checkpoints '
                    'go (required).')
  checkpoint_every: int = _f(10, 'Save a checkpoint every N rounds (0 = off).')
  keep_checkpoints: int = _f(3, 'Checkpoints kept.')
  num_devices: int = _f(0, 'Devices of the clients mesh (0 = all).')
  clients_per_device: int | str = _f(
      'auto', "Clients each device trains at once: the cohort runs in chunks "
      "(a loop inside the round program) to bound memory. 0 = the whole "
      "cohort at once; 'auto' = all at once if the compiled round fits "
      "--memory_fraction of a device's memory, else the largest chunk (halving)"
      ' that does.')
  memory_fraction: float = _f(0.75, "Share of a device's memory the round "
                              "program may use (--clients_per_device=auto).")
  device_memory_gb: float = _f(0.0, 'Memory of one device for '
                               '--clients_per_device=auto (0 = ask the '
                               'device; on CPU, physical memory / devices).')
  compilation_cache: str = _f(
      'default', 'Directory of the persistent XLA compilation cache, reused '
      "by every later run with the same programs; 'default' = "
      '$JAX_COMPILATION_CACHE_DIR if set, else '
      "~/.cache/fedrecon_jax/xla ($XDG_CACHE_HOME); '' = off.")
  # Multi-host (jax.distributed); every process runs the same command.
  distributed: bool = _f(False, 'Call jax.distributed.initialize before '
                         'training (TPU pods: no other flag needed).')
  coordinator_address: str = _f('', 'host:port of process 0 (empty = '
                                'auto-detect on TPU / SLURM).')
  num_processes: int = _f(0, 'Number of processes (0 = auto-detect).')
  process_id: int = _f(-1, 'This process (-1 = auto-detect).')

  @property
  def chunk_setting(self) -> int | str:
    """--clients_per_device as 'auto' or an int >= 0 (-1 if invalid)."""
    value = str(self.clients_per_device).strip()
    if value == 'auto':
      return value
    return int(value) if value.isdigit() else -1

  def validate(self) -> 'Config':
    """Raises ValueError naming the flag and its allowed values: the checks
    a Config needs alone (recipe.validate adds those that read the
    registries)."""
    for f in dataclasses.fields(self):
      choices = f.metadata.get('choices')
      value = getattr(self, f.name)
      if choices and value not in choices:
        raise ValueError(f'--{f.name}={value!r} is not one of {choices}.')
    check(self.alpha > 0 and math.isfinite(self.alpha), 'alpha',
           self.alpha, 'a finite number > 0')
    check(0 <= self.missing_rate < 1, 'missing_rate', self.missing_rate,
           'in [0, 1)')
    check(0 <= self.validation_fraction < 1, 'validation_fraction',
           self.validation_fraction, 'in [0, 1)')
    check(0 <= self.local_test_fraction < 1, 'local_test_fraction',
           self.local_test_fraction, 'in [0, 1)')
    for name in ('num_clients', 'clients_per_round', 'local_epochs',
                 'batch_size', 'latent_dim', 'gen_width', 'map_width',
                 'task_width', 'min_client_size', 'keep_checkpoints'):
      check(getattr(self, name) >= 1, name, getattr(self, name), '>= 1')
    for name in ('gen_rounds', 'rounds', 'checkpoint_every', 'num_devices',
                 'num_processes'):
      check(getattr(self, name) >= 0, name, getattr(self, name), '>= 0')
    check(self.chunk_setting != -1, 'clients_per_device',
           self.clients_per_device, "'auto' or an integer >= 0")
    check(0 < self.memory_fraction <= 1, 'memory_fraction',
           self.memory_fraction, 'in (0, 1]')
    check(self.device_memory_gb >= 0, 'device_memory_gb',
           self.device_memory_gb, '>= 0')
    check(self.eval_every >= 1, 'eval_every', self.eval_every, '>= 1')
    for name in ('client_lr', 'gen_lr', 'server_lr', 'gen_server_lr'):
      v = getattr(self, name)
      check(v > 0 and math.isfinite(v), name, v, 'a finite number > 0')
    for name in ('momentum', 'server_b1', 'server_b2'):
      check(0 <= getattr(self, name) < 1, name, getattr(self, name),
             'in [0, 1)')
    check(self.server_eps > 0, 'server_eps', self.server_eps, '> 0')
    for name in ('weight_decay', 'fedprox_mu', 'ditto_lambda', 'beta',
                 'match_weight', 'dp_clip', 'dp_noise_multiplier', 'dp_delta',
                 'dp_target_epsilon'):
      check(getattr(self, name) >= 0, name, getattr(self, name), '>= 0')
    check(self.clip_norm > 0, 'clip_norm', self.clip_norm, '> 0')
    check(self.dp_clip > 0 or self.dp_noise_multiplier == 0,
           'dp_noise_multiplier', self.dp_noise_multiplier,
           '0 unless --dp_clip > 0')
    check(math.isfinite(self.dp_clip) or self.dp_noise_multiplier == 0,
           'dp_noise_multiplier', self.dp_noise_multiplier,
           '0 when --dp_clip=inf (noise z C would be infinite)')
    check(self.dp_delta < 1, 'dp_delta', self.dp_delta, 'in [0, 1)')
    self._validate_dp()
    check(self.natural_split or self.clients_per_round <= self.num_clients,
           'clients_per_round', self.clients_per_round,
           f'<= --num_clients ({self.num_clients})')
    check(bool(self.workdir), 'workdir', self.workdir, 'a non-empty path')
    return self

  def _validate_dp(self) -> None:
    """Issue 37's settings: sampling, accountant, adaptive clipping."""
    check(0 <= self.dp_target_quantile <= 1, 'dp_target_quantile',
           self.dp_target_quantile, 'in [0, 1]')
    for name in ('dp_clip_lr', 'dp_clip_count_stddev',
                 'dp_group_count_multiplier'):
      v = getattr(self, name)
      check(v >= 0 and math.isfinite(v), name, v, 'a finite number >= 0')
    if self.dp_clip <= 0:
      check(self.dp_clip_lr == 0, 'dp_clip_lr', self.dp_clip_lr,
             '0 unless --dp_clip > 0 (adaptive clipping is part of DP)')
      return
    check(math.isfinite(self.dp_clip) or self.dp_clip_lr == 0, 'dp_clip_lr',
           self.dp_clip_lr, '0 when --dp_clip=inf (no clip to adapt)')
    check(self.dp_clip_lr == 0 or self.dp_noise_multiplier == 0
           or self.dp_clip_count_stddev > 0, 'dp_clip_count_stddev',
           self.dp_clip_count_stddev,
           '> 0 when --dp_clip_lr > 0 under noise (an exact count of '
           'clipped clients is not private)')
    check(self.dp_denominator == 'fixed' or self.dp_noise_multiplier == 0
           or self.dp_group_count_multiplier > 0, 'dp_group_count_multiplier',
           self.dp_group_count_multiplier,
           '> 0 when --dp_denominator=group under noise (exact counts of '
           'trainers are not private)')
    check(self.client_sampling == 'poisson' or self.dp_accountant == 'rdp',
           'dp_accountant', self.dp_accountant,
           "'rdp' with --client_sampling=fixed (dp_accounting's PLD has no "
           'sampling-without-replacement event), or use '
           '--client_sampling=poisson')

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def check(ok: bool, name: str, value: Any, allowed: str) -> None:
  """Raises ValueError naming flag --name, its value and what it allows."""
  if not ok:
    raise ValueError(f'--{name}={value!r} is invalid: must be {allowed}.')
