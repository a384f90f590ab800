"""Flags and the model builder read the method and generator registries."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from fedrecon_jax import config, generators, methods, recipe, server
from fedrecon_jax.models import Model

import toy


def test_flag_choices_are_the_registries():
  choices = {f.name: recipe.choices(f)
             for f in dataclasses.fields(config.Config)}
  assert choices['method'] == tuple(methods.REGISTRY)
  assert choices['joint_posterior'] == generators.JOINT
  assert choices['server_optimizer'] == tuple(server.OPTIMIZERS)
  assert choices['server_opt'] == server.AGGREGATIONS
  # Every trainable kind but those with mappings (FedRecon's own, and its
  # mappings over MMVAE+ latents) is a joint one.
  assert set(generators.TRAINABLE) - set(generators.JOINT) == {
      'mapping', 'mmvaeplus_map'}
  with pytest.raises(ValueError, match='--method=.nope. is not one of'):
    recipe.validate(toy.cfg_for(method='nope'))


def test_each_method_names_its_generator_and_stages():
  for name, method in methods.REGISTRY.items():
    cfg = toy.cfg_for(method=name, joint_posterior='mopoe')
    recipe_ = recipe.of(cfg)
    gen = recipe_.generator
    assert recipe_.method is method
    assert recipe_.stages[-1] == methods.TASK_STAGE
    assert (methods.GEN_STAGE in recipe_.stages) == (gen is not None)
    assert gen is None or gen.trainable


def test_model_builds_a_generators_latent_sizes():
  """A kind whose encoders and decoders use other latent sizes than
  --latent_dim (as MMVAE+'s shared + modality-specific latents do)."""
  model = Model(toy.SPEC, latent_dim=4, gen_width=8, map_width=8,
                task_width=4, latent_sizes=(3, 5))
  params = jax.eval_shape(model.init, jax.random.key(0))
  xs = [jnp.ones((2, *s)) for s in toy.SHAPES]
  mu, logvar = jax.eval_shape(model.encode, params['gen'], xs)
  assert mu.shape == logvar.shape == (3, 2, 3)
  out = jax.eval_shape(model.decode_all, params['gen'], jnp.zeros((3, 2, 5)))
  assert [o.shape for o in out] == [(2, *s) for s in toy.SHAPES]
