"""Metrics, posteriors and config validation on inputs with known answers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import evaluation, generator, recon_metrics
from fedrecon_jax.config import Config
from fedrecon_jax import recipe


def test_macro_f1_known_answer():
  y_true = np.array([0, 0, 1, 1, 2, 2])
  y_pred = np.array([0, 1, 1, 1, 2, 0])
  # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp1 fn1 -> 2/3
  assert evaluation.macro_f1(y_true, y_pred) == pytest.approx(
      (0.5 + 0.8 + 2 / 3) / 3)
  assert evaluation.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
  assert evaluation.macro_f1(y_true, y_true) == 1.0


def test_leave_one_out_mse_known_answers():
  xs = (np.arange(12.).reshape(4, 3).astype(np.float32),
        np.ones((4, 2), np.float32))
  perfect = lambda held_out, present, key: tuple(jnp.asarray(x) for x in xs)
  loo = recon_metrics.leave_one_out(perfect, xs, chunk=4)
  assert [(n, mse) for n, _, mse in loo] == [(0, 0.0), (1, 0.0)]
  # Rebuilding as zeros: the mean square of each modality's values.
  zeros = lambda held_out, present, key: tuple(jnp.zeros_like(h) for h in held_out)
  mse = [m for _, _, m in recon_metrics.leave_one_out(zeros, xs, chunk=3)]
  np.testing.assert_allclose(mse, [np.mean(np.arange(12.)**2), 1.0])
  # The rebuilt modality is zeroed in what the generator sees.
  echo = lambda held_out, present, key: held_out
  for n, x_hat, mse in recon_metrics.leave_one_out(echo, xs, chunk=3):
    np.testing.assert_array_equal(x_hat, np.zeros_like(xs[n]))
    assert mse == pytest.approx(np.mean(xs[n].astype(np.float64)**2))


def test_ridge_probe_separable():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 300)
  x = np.eye(3)[y] * 5 + rng.normal(size=(300, 3)) * 0.1
  assert evaluation.ridge_probe_accuracy(x[:200], y[:200], x[200:], y[200:],
                                         3) == 1.0


def test_product_of_experts_masks_absent_experts():
  mu = jnp.array([[[1.0]], [[3.0]]])            # [M=2, B=1, d=1]
  logvar = jnp.log(jnp.array([[[0.5]], [[0.25]]]))
  jmu, jlv = generator.product_of_experts(mu, logvar, jnp.array([[1.], [0.]]))
  # prior precision 1 + expert precision 2: var 1/3, mean 2*1/3.
  np.testing.assert_allclose(jmu, [[2 / 3]], rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(jlv), [[1 / 3]], rtol=1e-6)
  jmu, jlv = generator.product_of_experts(mu, logvar, jnp.ones((2, 1)))
  np.testing.assert_allclose(jmu, [[(2 * 1 + 4 * 3) / 7]], rtol=1e-6)


def test_kl_of_prior_is_zero():
  assert float(generator.kl_std_normal(jnp.zeros(4), jnp.zeros(4))) == 0.0
  assert float(generator.kl_std_normal(jnp.ones(4), jnp.zeros(4))) == 2.0


@pytest.mark.parametrize('field,value,needle', [
    ('alpha', 0.0, '--alpha'),
    ('missing_rate', 1.0, '--missing_rate'),
    ('method', 'fedfoo', '--method'),
    ('clients_per_round', 50, '--clients_per_round'),
    ('workdir', '', '--workdir'),
    ('batch_size', 0, '--batch_size'),
])
def test_config_errors_name_the_flag(field, value, needle):
  cfg = dataclasses.replace(Config(workdir='/tmp/w'), **{field: value})
  with pytest.raises(ValueError, match=needle):
    recipe.validate(cfg)
