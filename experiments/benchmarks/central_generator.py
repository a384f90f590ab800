r"""A generator trained centrally on polymnist_5k: model or federation?

One process, all 4,000 training samples, every modality present, the same
networks and objective as the federated runs (models.Model,
generator.objective), Adam. Prints per epoch the loss terms, one-input
coherence (the cached Table 2 probes), self-reconstruction MSE and how much
class the latents hold (a logistic regression on mu_m, train -> test). If
this stays at chance too, the fault is in the model, likelihood or
objective, not in the federated schedule.

  python -m experiments.benchmarks.central_generator --kind=moe --epochs=6 --batch=16

Measured on 2 CPU cores: experiments/results/central_generator_cpu.md.
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
from fedrecon_jax.models import DataSpec, Model

_KIND = flags.DEFINE_enum('kind', 'moe', list(generators.TRAINABLE),
                          'Generator objective.')
_EPOCHS = flags.DEFINE_integer('epochs', 6, 'Epochs over the training set.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Batch size.')
_BETA = flags.DEFINE_float('beta', 2.5, 'KL weight.')
_LR = flags.DEFINE_float('lr', 1e-3, 'Adam learning rate.')
_LATENT = flags.DEFINE_integer('latent_dim', 32, 'Latent size d.')
_PROBES = flags.DEFINE_string('probe_dir', 'workdirs/table2/polymnist_5k',
                              'Where the coherence probes are cached.')


def main(argv):
  del argv
  ds = data.load('polymnist_5k')
  spec = DataSpec(ds.modalities, ds.kinds,
                  tuple(x.shape[1:] for x in ds.train.xs), ds.num_classes)
  model = Model(spec, latent_dim=_LATENT.value, gen_width=256,
                map_width=256, task_width=64)
  params = model.init_params(jax.random.key(0))
  params = {'gen': params['gen'], 'map': params['map']}
  tx = optax.adam(_LR.value)
  opt = tx.init(params)
  xs, test_xs = ds.train.xs, ds.test.xs
  n, m = len(ds.train.y), spec.num_modalities

  @jax.jit
  def step(params, opt, batch, key):
    def loss(p):
      present = jnp.ones((batch[0].shape[0], m), bool)
      per_sample, terms = generator.objective(
          _KIND.value, model, p, batch, present, key, beta=_BETA.value,
          match_weight=1.0, cross_decoding='one')
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

  rng, key, t0 = np.random.default_rng(0), jax.random.key(1), time.time()
  for epoch in range(1, _EPOCHS.value + 1):
    order = rng.permutation(n)
    for i in range(n // _BATCH.value):
      idx = order[i * _BATCH.value:(i + 1) * _BATCH.value]
      key, k = jax.random.split(key)
      params, opt, terms = step(params, opt, [x[idx] for x in xs], k)
    train_s = time.time() - t0
    # Sampled latents, one draw, as Table 2 scores (recon_metrics).
    mse, coh = recon_metrics.single_sources(
        recon_metrics.reconstructor(_KIND.value, model, params, sample=True),
        test_xs, ds.test.y, judges, key=jax.random.fold_in(key, epoch),
        ranges=recon_metrics.data_ranges(model.spec.kinds))
    mu_train, mu_test = latents(xs), latents(test_xs)
    class_in_mu = np.mean([
        LogisticRegression(max_iter=500).fit(mu_train[j], ds.train.y)
        .score(mu_test[j], ds.test.y) for j in range(m)])
    print(f'epoch {epoch} ({train_s:.0f} s training) ' + ' '.join(
        f'{k}={float(v):.1f}' for k, v in terms.items()) +
          f' coherence_1={recon_metrics.off_diagonal_mean(coh).mean():.3f}'
          f' self_mse={np.diag(mse).mean():.4f}'
          f' class_in_mu={class_in_mu:.3f}', flush=True)


if __name__ == '__main__':
  app.run(main)
