r"""A generator trained centrally on polymnist_5k: model or federation?

One process, all 4,000 training samples, every modality present, the same
networks and objective as the federated runs (models.Model,
generator.objective), Adam. Prints per evaluation the loss terms, one-input
coherence (the cached Table 2 probes), self-reconstruction MSE and how much
class the latents hold (a logistic regression on mu_m, train -> test). If
this stays at chance too, the fault is in the model, likelihood or
objective, not in the federated schedule.

For --kind=mmvaeplus it also prints, on the test set, where the class and
the reconstruction live: class in the private w_m and in the shared z_m
means separately, the self-reconstruction MSE decoding (w_m, z_m) and
decoding (w~ from the prior, z_m) (if w absorbs everything the second is
the mean image), and the sampled KL of each half (log q - log p).

  python -m experiments.benchmarks.central_generator --kind=moe --epochs=6 --batch=16

Measured on 2 CPU cores: experiments/results/central_generator_cpu.md,
experiments/results/mmvaeplus_images_cpu.md.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.linear_model import LogisticRegression

from fedrecon_jax import data, generator, generators, probes, recon_metrics
from fedrecon_jax.generators import mmvaeplus
from fedrecon_jax.models import DataSpec, Model

_KIND = flags.DEFINE_enum('kind', 'moe', list(generators.TRAINABLE),
                          'Generator objective.')
_EPOCHS = flags.DEFINE_float('epochs', 6, 'Epochs over the training set '
                             '(a fraction stops mid-epoch).')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 0, 'Steps between scores; '
                                   '0: once an epoch.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Batch size.')
_BETA = flags.DEFINE_float('beta', 2.5, 'KL weight.')
_LR = flags.DEFINE_float('lr', 1e-3, 'Adam learning rate.')
_LATENT = flags.DEFINE_integer('latent_dim', 32, 'Latent size d.')
_CROSS = flags.DEFINE_enum('cross_decoding', 'one', list(
    generator.CROSS_DECODING), 'Cross decodes per source (mapping, moe, '
    'mmvaeplus).')
_SEED = flags.DEFINE_integer('seed', 0, 'Init and batch-order seed.')
_FIXED_PRIOR = flags.DEFINE_bool(
    'fixed_prior', False, 'mmvaeplus, an ablation: hold the prior r(w_n) of '
    'the cross decodes at its start, Laplace(0, 1 + eta), instead of '
    'learning its log-scale (params["prior_w"], the reference\'s '
    'pw_params).')
_SCALE = flags.DEFINE_enum(
    'posterior_scale', 'softmax', ['softmax', 'softplus'],
    'mmvaeplus, an ablation: the Laplace posteriors\' scale softmax(raw) * d '
    '+ eta (the reference) or softplus(raw) + eta (the alternative left '
    'commented out in its code: every entry free).')
_CROSS_WEIGHT = flags.DEFINE_float(
    'cross_weight', 1.0, 'mmvaeplus, an ablation: weight of the cross '
    'decodes\' NLL (1: the reference\'s objective; 0: each source rebuilds '
    'only itself, so the shared z gets no cross-modal signal).')
_CROSS_WARMUP = flags.DEFINE_integer(
    'cross_warmup', 0, 'mmvaeplus, an ablation: steps over which the cross '
    'decodes\' weight ramps linearly from 0 to --cross_weight (0: no ramp), '
    'so the latents can take the digit from the self terms first.')
_PROBES = flags.DEFINE_string('probe_dir', 'workdirs/table2/polymnist_5k',
                              'Where the coherence probes are cached.')


def class_in(train, test, y_train, y_test) -> float:
  """Test accuracy of a logistic regression fitted on [N, k] features."""
  return LogisticRegression(max_iter=500).fit(train, y_train).score(
      test, y_test)


def mmvaeplus_reads(model, params, xs, key):
  """On samples xs (every modality): per modality [M] the self MSE decoding
  (w_m, z_m) ~ q, the self MSE decoding (w~ ~ Laplace(0, 1), z_m), and the
  sampled KL of w and of z (log q(.|x_m) - log p(.), per sample, mean)."""
  mu, raw = model.encode(params['gen'], xs)                 # [M, B, 2d]
  d = mu.shape[-1] // 2
  scale = mmvaeplus.posterior_scale(raw)
  ku, kw = jax.random.split(key)
  u = mmvaeplus.laplace_sample(mu, scale, mmvaeplus._open_uniform(
      ku, mu.shape))
  w_prior = mmvaeplus.laplace_sample(0.0, 1.0, mmvaeplus._open_uniform(
      kw, u[..., :d].shape))
  swapped = jnp.concatenate([w_prior, u[..., d:]], -1)
  mse = lambda lat: jnp.stack([
      ((model.as_data(n, xh) - x)**2).reshape(x.shape[0], -1).mean((0, 1))
      for n, (xh, x) in enumerate(zip(model.decode_all(params['gen'], lat),
                                      xs))])
  kl = lambda sl: (mmvaeplus.laplace_logpdf(u[..., sl], mu[..., sl],
                                            scale[..., sl])
                   - mmvaeplus.laplace_logpdf(u[..., sl], 0.0, 1.0)).mean(1)
  return (mse(u), mse(swapped), kl(slice(None, d)), kl(slice(d, None)))


def main(argv):
  del argv
  ds = data.load('polymnist_5k')
  spec = DataSpec(ds.modalities, ds.kinds,
                  tuple(x.shape[1:] for x in ds.train.xs), ds.num_classes)
  gen_kind = generators.get(_KIND.value)
  model = Model(spec, latent_dim=_LATENT.value, gen_width=256,
                map_width=256, task_width=64,
                latent_sizes=gen_kind.latent_sizes(_LATENT.value),
                extra_groups=gen_kind.extra_groups)
  params = model.init_params(jax.random.key(_SEED.value))
  params = {g.name: params[g.name] for g in gen_kind.groups}
  if _SCALE.value == 'softplus':
    # A diagnostic swap of the module's function (objective and sampler
    # both read it), not a setting of the federated runs.
    mmvaeplus.posterior_scale = lambda raw: jax.nn.softplus(raw) + mmvaeplus.ETA
  tx = optax.adam(_LR.value)
  if _FIXED_PRIOR.value:
    tx = optax.multi_transform(
        {'train': tx, 'fixed': optax.set_to_zero()},
        {k: 'fixed' if k == 'prior_w' else 'train' for k in params})
  opt = tx.init(params)
  xs, test_xs = ds.train.xs, ds.test.xs
  n, m = len(ds.train.y), spec.num_modalities

  @jax.jit
  def step(params, opt, batch, key, cross_weight):
    def loss(p):
      present = jnp.ones((batch[0].shape[0], m), bool)
      extra = ({'cross_weight': cross_weight}
               if _KIND.value == 'mmvaeplus' else {})
      per_sample, terms = generator.objective(
          _KIND.value, model, p, batch, present, key, beta=_BETA.value,
          match_weight=1.0, cross_decoding=_CROSS.value, **extra)
      return per_sample.mean(), jax.tree.map(jnp.mean, terms)
    (_, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, terms

  judges = probes.cached_probes(_PROBES.value, ds.modalities, xs, ds.train.y,
                                ds.num_classes, key=jax.random.key(0))
  encode = jax.jit(model.encode)
  def latents(arrays):
    return np.concatenate([np.asarray(encode(
        params['gen'], [a[i:i + 500] for a in arrays])[0])
                           for i in range(0, len(arrays[0]), 500)], axis=1)
  reads = jax.jit(lambda p, x, k: mmvaeplus_reads(model, p, x, k))

  def score(step_no, terms, train_s):
    # Sampled latents, one draw, as Table 2 scores (recon_metrics).
    key = jax.random.key(1000 + step_no)
    mse, coh = recon_metrics.single_sources(
        recon_metrics.reconstructor(_KIND.value, model, params, sample=True),
        test_xs, ds.test.y, judges, key=key,
        ranges=recon_metrics.data_ranges(model.spec.kinds))
    mu_train, mu_test = latents(xs), latents(test_xs)
    if 'prior_w' in params:
      pw = np.asarray(mmvaeplus.prior_w_scale(params, m, _LATENT.value))
      line_pw = f' prior_w_scale(min/median/max)={pw.min():.3f}/{np.median(pw):.3f}/{pw.max():.2f}'
    else:
      line_pw = ''
    line = (f'step {step_no} ({train_s:.0f} s training) ' + ' '.join(
        f'{k}={float(v):.1f}' for k, v in terms.items()) +
            f' coherence_1={recon_metrics.off_diagonal_mean(coh).mean():.3f}'
            f' coherence_self={np.diag(coh).mean():.3f}'
            f' self_mse={np.diag(mse).mean():.4f}')
    if _KIND.value == 'mmvaeplus':
      d = mu_test.shape[-1] // 2
      for name, sl in (('w', slice(None, d)), ('z', slice(d, None))):
        acc = np.mean([class_in(mu_train[j][:, sl], mu_test[j][:, sl],
                                ds.train.y, ds.test.y) for j in range(m)])
        line += f' class_in_{name}={acc:.3f}'
      parts = [np.asarray(reads(params, [x[i:i + 500] for x in test_xs],
                                jax.random.fold_in(key, i)))
               for i in range(0, len(ds.test.y), 500)]
      mse_wz, mse_pz, kl_w, kl_z = np.mean(parts, 0).mean(-1)
      line += (f' self_mse(w,z)={mse_wz:.4f} self_mse(w~prior,z)='
               f'{mse_pz:.4f} kl_w={kl_w:.1f} kl_z={kl_z:.1f}')
    else:
      acc = np.mean([class_in(mu_train[j], mu_test[j], ds.train.y,
                              ds.test.y) for j in range(m)])
      line += f' class_in_mu={acc:.3f}'
    print(line + line_pw, flush=True)

  per_epoch = n // _BATCH.value
  total = int(round(_EPOCHS.value * per_epoch))
  every = _EVAL_EVERY.value or per_epoch
  rng, key, train_s = np.random.default_rng(_SEED.value), jax.random.key(1), 0.0
  order = rng.permutation(n)
  for s in range(total):
    if s % per_epoch == 0:
      order = rng.permutation(n)
    i = s % per_epoch
    idx = order[i * _BATCH.value:(i + 1) * _BATCH.value]
    key, k = jax.random.split(key)
    ramp = min(1.0, s / _CROSS_WARMUP.value) if _CROSS_WARMUP.value else 1.0
    params, opt, terms = step(params, opt, [x[idx] for x in xs], k,
                              jnp.float32(_CROSS_WEIGHT.value * ramp))
    if s == 0:      # the first step's compile is not counted as training
      jax.block_until_ready(params)
      mark = time.time()
    if (s + 1) % every == 0 or s + 1 == total:
      jax.block_until_ready(params)
      train_s += time.time() - mark
      score(s + 1, terms, train_s)
      mark = time.time()

if __name__ == '__main__':
  app.run(main)
