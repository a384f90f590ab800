"""Evaluation of reconstruction: cross-modal MSE, coherence and retrieval.

FEDRECON.md, "Evaluation of reconstruction":
  * reconstruction error of a modality rebuilt from other modalities
    (`recon_mse_matrix`: every target n from every single source m);
  * coherence: a classifier ("probe") trained on real data of modality n
    labels the reconstructions x_n-hat; its accuracy is the coherence
    (probes.py: `train_probe`, `coherence`, `cached_probes`);
  * cross-modal retrieval as in the paper's CUB evaluation: cosine similarity
    of T(n<-m)(mu_m) against every mu_n of the test set, Top@1/5/10 and
    median / mean rank, against the raw-latent baseline (`retrieval`).
`table2_metrics` runs all of them for one trained model; `image_grid` lays
out PolyMNIST reconstructions for a figure.

Everything works on whole test sets held in host memory and runs the model in
fixed-size chunks (the last one zero-padded), so each jitted program compiles
once per chunk shape and device memory stays bounded by the chunk.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax import generator, generators
from fedrecon_jax import probes as probes_lib
from fedrecon_jax.models import Model

# reconstruct_from(xs, present [B, M], key) -> per-modality reconstructions
# [B, ...]; a posterior-mean reader ignores the key.
ReconstructFn = Callable[[Sequence[jax.Array], jax.Array, jax.Array],
                         Sequence[jax.Array]]
# Per modality, the (low, high) range of the data or None: reconstructions
# are clipped to it before anything scores them, as the grids show them.
Ranges = tuple[tuple[float, float] | None, ...]

DEFAULT_CHUNK = probes_lib.DEFAULT_CHUNK
# Draws of sampled latents Table 2 averages coherence over.
DRAWS = 5
# The range of each modality kind's model-ready data (data/loader.py:
# images scaled to [0, 1]; vectors and sequences standardised, unbounded).
KIND_RANGES = {'image': (0.0, 1.0)}


def data_ranges(kinds: Sequence[str]) -> Ranges:
  """Per modality kind, its data's range (`KIND_RANGES`) or None."""
  return tuple(KIND_RANGES.get(k) for k in kinds)


# ------------------------------------------------------------- chunked passes


def reconstructor(kind: str, model: Model, params: Any, *,
                  sample: bool) -> jax.tree_util.Partial:
  """generator.reconstruct with kind/model/params bound, as a pytree.

  sample=False decodes posterior means (the key is ignored); sample=True
  decodes one draw of sampled latents per key (generator.sample_latents).
  The params are the Partial's leaves, so the functions below trace them as
  arguments instead of baking them into the program as constants: one
  compilation serves every parameter value of the same model.
  """
  return jax.tree_util.Partial(_bound_reconstruct(kind, model, sample),
                               params)


@functools.lru_cache(maxsize=None)
def _bound_reconstruct(kind: str, model: Model, sample: bool):
  # Cached so that repeated reconstructor() calls give Partials with an equal
  # (identical) function, which is what jit's cache compares.
  def fn(params, xs, present, key):
    return generator.reconstruct(kind, model, params, xs, present,
                                 key if sample else None)
  return fn


def _as_pytree(fn: ReconstructFn) -> jax.tree_util.Partial:
  # A plain callable becomes a Partial with no leaves: jit keys its cache on
  # the function's identity and treats anything it closes over as constants.
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  return jax.tree_util.Partial(fn)


@functools.partial(jax.jit, static_argnames='ranges')
def _reconstruct_chunk(reconstruct_from, xs, present, key, ranges):
  """One chunk: absent inputs zeroed, then rebuilt and clipped to `ranges`.

  Returns (x_hats per modality [B, ...], per-sample per-feature MSE [B, M]).
  Zeroing makes sure nothing of an absent modality can leak into its own
  reconstruction, whatever the generator does with `present`.
  """
  held = tuple(
      jnp.where(present[:, i].reshape(-1, *[1] * (x.ndim - 1)), x,
                jnp.zeros_like(x)) for i, x in enumerate(xs))
  x_hats = tuple(xh if r is None else jnp.clip(xh, *r) for xh, r in
                 zip(reconstruct_from(held, present, key), ranges))
  err = jnp.stack([jnp.square(xh - x).reshape(x.shape[0], -1).mean(1)
                   for xh, x in zip(x_hats, xs)], axis=1)
  return x_hats, err


def reconstruct_in_chunks(reconstruct_from: ReconstructFn,
                          xs: Sequence[np.ndarray], present: np.ndarray, *,
                          key: jax.Array | None = None,
                          ranges: Ranges | None = None,
                          chunk: int = DEFAULT_CHUNK):
  """Rebuilds every modality of a whole set from the `present` ones.

  Args:
    reconstruct_from: (xs, present [B, M], key) -> per-modality
      reconstructions. A `jax.tree_util.Partial` (e.g. from `reconstructor`)
      has its leaves traced; any other callable is compiled with what it
      closes over.
    xs: per modality [N, ...] true values.
    present: [M] bool (the same modalities for every sample) or [N, M].
    key: the draw's key (chunk c gets fold_in(key, c)); None: key 0, for
      readers that ignore it.
    ranges: per modality (low, high) or None; default no clipping.
    chunk: rows per compiled call.

  Returns:
    (x_hats, err): x_hats per modality [N, ...] numpy; err [N, M] the
    per-sample mean over features of the squared error against xs.
  """
  m, n = len(xs), xs[0].shape[0]
  present = np.asarray(present, bool)
  if present.ndim == 1:
    present = np.broadcast_to(present, (n, m))
  chex.assert_shape(present, (n, m))
  for x in xs:
    chex.assert_axis_dimension(x, 0, n)
  ranges = tuple(ranges) if ranges is not None else (None,) * m
  chex.assert_equal(len(ranges), m)
  key = jax.random.key(0) if key is None else key
  fn = _as_pytree(reconstruct_from)
  size = min(chunk, n)
  x_hats, errs = [], []
  for c, (lo, hi) in enumerate(probes_lib.chunk_slices(n, size)):
    xc = tuple(probes_lib.pad_rows(np.asarray(x[lo:hi], np.float32), size)
               for x in xs)
    xh, err = _reconstruct_chunk(fn, xc,
                                 probes_lib.pad_rows(present[lo:hi], size),
                                 jax.random.fold_in(key, c), ranges)
    x_hats.append([np.asarray(a[:hi - lo]) for a in xh])
    errs.append(np.asarray(err[:hi - lo]))
  return (tuple(np.concatenate(parts) for parts in zip(*x_hats)),
          np.concatenate(errs))


def _only(m: int, num: int) -> np.ndarray:
  return np.arange(num) == m


def leave_one_out(reconstruct_from: ReconstructFn, xs: Sequence[np.ndarray],
                  *, key: jax.Array | None = None,
                  ranges: Ranges | None = None, chunk: int = DEFAULT_CHUNK):
  """Each modality n rebuilt from all the others (n absent and zeroed).

  Yields (n, x_hat_n [N, ...], per-feature MSE of x_hat_n averaged over
  samples) for n = 0 .. M-1; arguments as for `reconstruct_in_chunks`
  (target n draws from fold_in(key, n)).
  """
  num = len(xs)
  key = jax.random.key(0) if key is None else key
  for n in range(num):
    x_hats, err = reconstruct_in_chunks(
        reconstruct_from, xs, ~_only(n, num), key=jax.random.fold_in(key, n),
        ranges=ranges, chunk=chunk)
    yield n, x_hats[n], float(err[:, n].mean())


def recon_mse_matrix(reconstruct_from: ReconstructFn, xs: Sequence[np.ndarray],
                     *, key: jax.Array | None = None,
                     ranges: Ranges | None = None,
                     chunk: int = DEFAULT_CHUNK) -> np.ndarray:
  """[M, M] cross-modal reconstruction error over a whole set.

  Entry (n, m) is the per-feature MSE of modality n rebuilt from modality m
  alone (the others absent and zeroed), averaged over samples; the diagonal
  is self-reconstruction. Arguments as for `single_sources`.
  """
  mse, _ = single_sources(reconstruct_from, xs, None, None, key=key,
                          ranges=ranges, chunk=chunk)
  return mse


# ---------------------------------------------------------------- retrieval


def retrieval(queries: np.ndarray, targets: np.ndarray, *,
              chunk: int = 1024) -> dict[str, float]:
  """Cross-modal retrieval of each query's partner, the target of same index.

  Each query ranks all N targets by cosine similarity; the rank (1-based) of
  its partner counts every other target at least as similar, so ties rank
  against the query: a collapsed embedding (all latents equal) scores rank N,
  not a perfect Top@1.

  Args:
    queries: [N, d], e.g. T(n<-m)(mu_m) over a test set.
    targets: [N, d], e.g. mu_n over the same samples.
    chunk: query rows per similarity block ([chunk, N] floats at a time).

  Returns:
    top1, top5, top10 (fraction of queries whose partner ranks within k),
    median_rank and mean_rank.
  """
  chex.assert_rank(queries, 2)
  chex.assert_equal_shape((queries, targets))
  def unit(a):
    a = np.asarray(a, np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  q, t = unit(queries), unit(targets)
  n = q.shape[0]
  ranks = np.empty(n, np.int64)
  for lo, hi in probes_lib.chunk_slices(n, chunk):
    sim = q[lo:hi] @ t.T                                   # [b, N]
    # The partner's score read from the same matrix, so equal vectors compare
    # equal exactly and the partner itself is counted once (rank >= 1).
    own = sim[np.arange(hi - lo), np.arange(lo, hi)][:, None]
    ranks[lo:hi] = (sim >= own).sum(1)
  return {'top1': float(np.mean(ranks <= 1)),
          'top5': float(np.mean(ranks <= 5)),
          'top10': float(np.mean(ranks <= 10)),
          'median_rank': float(np.median(ranks)),
          'mean_rank': float(np.mean(ranks))}


@functools.partial(jax.jit, static_argnums=0)
def _latents_chunk(model: Model, params, xs):
  """mu [M, B, d] and the mapped means T(n<-m)(mu_m) [P, B, d]."""
  mu, _ = model.encode(params['gen'], xs)
  return mu, model.map_pairs(params['map'], mu)


def latents(model: Model, params: Any, xs: Sequence[np.ndarray], *,
            chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """Posterior means over a whole set: (mu [M, N, d], mapped [P, N, d]),
  mapped[p] = T(pairs[p, 0] <- pairs[p, 1])(mu[pairs[p, 1]])."""
  n = xs[0].shape[0]
  size = min(chunk, n)
  mus, maps = [], []
  for lo, hi in probes_lib.chunk_slices(n, size):
    xc = tuple(probes_lib.pad_rows(np.asarray(x[lo:hi], np.float32), size)
               for x in xs)
    mu, mapped = _latents_chunk(model, params, xc)
    mus.append(np.asarray(mu[:, :hi - lo]))
    maps.append(np.asarray(mapped[:, :hi - lo]))
  return np.concatenate(mus, 1), np.concatenate(maps, 1)


def _mean_stats(stats: Sequence[dict[str, float]]) -> dict[str, float]:
  return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}


# ------------------------------------------------------------------ table 2


def table2_metrics(kind: str, model: Model, params: Any,
                   test_xs: Sequence[np.ndarray], test_y: np.ndarray,
                   probes: Sequence[probes_lib.Probe] | None, *,
                   key: jax.Array, draws: int = DRAWS,
                   chunk: int = DEFAULT_CHUNK) -> dict[str, Any]:
  """Every reconstruction metric of one trained generator on a test set.

  Scored as the references score (FEDRECON.md, "Scoring reconstruction as
  the references do"): each reconstruction decodes sampled latents
  (`generator.sample_latents`), `draws` independent draws, each from
  fold_in(key, draw); the numbers are means over the draws. The same metrics
  read from posterior means are kept under 'posterior_mean'. Every
  reconstruction is clipped to its data's range (`data_ranges`) first.

  Args:
    kind: a generator kind of the registry.
    model: the Model.
    params: its params ('gen', and 'map' for kinds with mappings).
    test_xs: per modality [N, ...] (all modalities present).
    test_y: [N] labels.
    probes: one Probe per modality trained on real data, or None to skip
      coherence.
    key: the draws' key.
    draws: number of sampled draws (>= 1).
    chunk: rows per compiled call.

  Returns:
    A dict (numpy arrays indexed by modality in model.spec order):
      modalities: names; draws: their number.
      mse: [M, M], (n, m) = MSE of n rebuilt from m alone (diagonal: self).
      mse_loo: [M], n rebuilt from all the others.
      With probes:
      probe_accuracy: [M], each probe on the real test samples.
      coherence_single: [M, M], n rebuilt from m alone (diagonal: self).
      coherence_single_mean: [M], row n's mean over the sources m != n.
      coherence_loo: [M], n rebuilt from all the others.
      one_input, all_others: scalars, the means of coherence_single_mean
        and of coherence_loo.
      per_draw: {'coherence_single' [D, M, M], 'coherence_loo' [D, M],
        'one_input' [D], 'all_others' [D]}.
      posterior_mean: mse, mse_loo and (with probes) coherence_single,
        coherence_single_mean, coherence_loo, one_input, all_others, read
        from posterior means.
      For kinds with mappings:
      retrieval: {'mapping': {...}, 'raw': {...}}; each holds one stats dict
        (see `retrieval`) per ordered pair, keyed 'n<-m', plus 'mean' over
        pairs. 'mapping' queries T(n<-m)(mu_m), 'raw' queries mu_m itself;
        both retrieve among the mu_n of the test set (posterior means, as
        FedRecon's release evaluates retrieval).
  """
  spec = model.spec
  chex.assert_equal(len(test_xs), spec.num_modalities)
  out: dict[str, Any] = {'modalities': tuple(spec.modalities)}
  out.update(score_generator(
      reconstructor(kind, model, params, sample=True),
      reconstructor(kind, model, params, sample=False), test_xs, test_y,
      probes, ranges=data_ranges(spec.kinds), key=key, draws=draws,
      chunk=chunk))
  if generators.get(kind).uses_mappings:
    out['retrieval'] = mapping_retrieval(model, params, test_xs, chunk=chunk)
  return out


def score_generator(read_sampled: ReconstructFn, read_means: ReconstructFn,
                    test_xs: Sequence[np.ndarray], test_y: np.ndarray,
                    probes: Sequence[probes_lib.Probe] | None, *,
                    key: jax.Array, draws: int = DRAWS,
                    ranges: Ranges | None = None,
                    chunk: int = DEFAULT_CHUNK) -> dict[str, Any]:
  """`table2_metrics` but retrieval, for any pair of reads: `draws` reads
  of `read_sampled` (draw d from fold_in(key, d)) averaged, and one of
  `read_means` under 'posterior_mean'. Returns the keys `table2_metrics`
  documents (but modalities and retrieval)."""
  num = len(test_xs)
  chex.assert_rank(test_y, 1)
  if draws < 1:
    raise ValueError(f'draws={draws} must be >= 1.')
  if probes is not None:
    chex.assert_equal(len(probes), num)
  sampled = [score_reads(read_sampled, test_xs, test_y, probes,
                         key=jax.random.fold_in(key, d), ranges=ranges,
                         chunk=chunk) for d in range(draws)]
  mean_read = score_reads(read_means, test_xs, test_y, probes, ranges=ranges,
                          chunk=chunk)
  out: dict[str, Any] = {'draws': draws}
  out.update({k: np.mean([s[k] for s in sampled], 0) for k in sampled[0]})
  if probes is not None:
    for read in [out, mean_read]:
      read['coherence_single_mean'] = off_diagonal_mean(
          read['coherence_single'])
      read['one_input'] = float(read['coherence_single_mean'].mean())
      read['all_others'] = float(read['coherence_loo'].mean())
    out['per_draw'] = {
        'coherence_single': np.stack([s['coherence_single'] for s in sampled]),
        'coherence_loo': np.stack([s['coherence_loo'] for s in sampled]),
        'one_input': np.array([off_diagonal_mean(s['coherence_single']).mean()
                               for s in sampled]),
        'all_others': np.array([s['coherence_loo'].mean() for s in sampled])}
    out['probe_accuracy'] = np.array([
        probes_lib.coherence(p, x, test_y, chunk=chunk)
        for p, x in zip(probes, test_xs)])
  out['posterior_mean'] = mean_read
  return out


def score_reads(reconstruct_from: ReconstructFn,
                test_xs: Sequence[np.ndarray], test_y: np.ndarray,
                probes: Sequence[probes_lib.Probe] | None, *,
                key: jax.Array | None = None, ranges: Ranges | None = None,
                chunk: int = DEFAULT_CHUNK) -> dict[str, np.ndarray]:
  """One read of every reconstruction: from each single source and from
  all the others.

  Returns mse [M, M] and mse_loo [M], plus, with probes, coherence_single
  [M, M] and coherence_loo [M] (`single_sources`, `leave_one_out`; the
  single sources draw from fold_in(key, 0), leave-one-out from
  fold_in(key, 1)).
  """
  key = jax.random.key(0) if key is None else key
  mse, coh = single_sources(reconstruct_from, test_xs, test_y, probes,
                            key=jax.random.fold_in(key, 0), ranges=ranges,
                            chunk=chunk)
  num = len(test_xs)
  mse_loo, coh_loo = np.zeros(num), np.zeros(num)
  for n, x_hat, mse_loo[n] in leave_one_out(
      reconstruct_from, test_xs, key=jax.random.fold_in(key, 1),
      ranges=ranges, chunk=chunk):
    if probes is not None:
      coh_loo[n] = probes_lib.coherence(probes[n], x_hat, test_y, chunk=chunk)
  out = {'mse': mse, 'mse_loo': mse_loo}
  if probes is not None:
    out.update(coherence_single=coh, coherence_loo=coh_loo)
  return out


def single_sources(reconstruct_from: ReconstructFn,
                   test_xs: Sequence[np.ndarray], test_y: np.ndarray | None,
                   probes: Sequence[probes_lib.Probe] | None, *,
                   key: jax.Array | None = None, ranges: Ranges | None = None,
                   chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """Every modality rebuilt from each single source m, one pass per source
  (source m draws from fold_in(key, m)).

  Returns (mse, coherence), each [M, M] with (n, m) = modality n rebuilt from
  m alone (diagonal: self); coherence is zeros without probes.
  """
  num = len(test_xs)
  key = jax.random.key(0) if key is None else key
  mse, coh = np.zeros((num, num)), np.zeros((num, num))
  for m in range(num):
    x_hats, err = reconstruct_in_chunks(
        reconstruct_from, test_xs, _only(m, num),
        key=jax.random.fold_in(key, m), ranges=ranges, chunk=chunk)
    mse[:, m] = err.mean(0)
    if probes is not None:
      for n in range(num):
        coh[n, m] = probes_lib.coherence(probes[n], x_hats[n], test_y,
                                         chunk=chunk)
  return mse, coh


def off_diagonal_mean(matrix: np.ndarray) -> np.ndarray:
  """[M, M] -> [M]: row n's mean over the columns m != n (cross-modal)."""
  matrix = np.asarray(matrix)
  off = ~np.eye(len(matrix), dtype=bool)
  return np.array([matrix[n, off[n]].mean() for n in range(len(matrix))])


def mapping_retrieval(model: Model, params: Any,
                      test_xs: Sequence[np.ndarray], *,
                      chunk: int = DEFAULT_CHUNK) -> dict[str, dict]:
  """{'mapping': ..., 'raw': ...}: per ordered pair 'n<-m' (and 'mean'), the
  `retrieval` stats of T(n<-m)(mu_m), and of mu_m itself, among the mu_n."""
  names = model.spec.modalities
  mu, mapped = latents(model, params, test_xs, chunk=chunk)
  res = {'mapping': {}, 'raw': {}}
  for p, (n, m) in enumerate(model.spec.pairs):
    key = f'{names[n]}<-{names[m]}'
    res['mapping'][key] = retrieval(mapped[p], mu[n])
    res['raw'][key] = retrieval(mu[m], mu[n])
  for stats in res.values():
    stats['mean'] = _mean_stats(list(stats.values()))
  return res


# ------------------------------------------------------------------- figure


def as_picture(kind: str, x: np.ndarray, lo: float, hi: float
               ) -> np.ndarray:
  """[k, *shape] samples of one modality -> [k, C, H, W] in [0, 1] for
  `image_grid`: images as they are; a sequence [k, T, C] as a C x T heat
  map, (x - lo) / (hi - lo) clipped (pass the true examples' range so that
  truth and reconstructions share one scale); a masked sequence [k, T, C +
  1] the same over its real frames, padded frames white; a vector [k, d] a
  1 x d strip."""
  x = np.asarray(x, np.float32)
  if kind == 'image':
    return x
  scaled = lambda v: np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
  if kind == 'vector':
    return scaled(x)[:, None, None, :]
  if kind == 'masked_sequence':
    real = x[..., -1:] > 0.5                               # [k, T, 1]
    pic = np.where(real, scaled(x[..., :-1]), 1.0)
  else:
    pic = scaled(x)
  return np.transpose(pic, (0, 2, 1))[:, None]            # [k, 1, C, T]


def picture_range(kind: str, x: np.ndarray) -> tuple[float, float]:
  """(lo, hi) of `as_picture` for samples x: the values of its real
  entries (images: (0, 1))."""
  x = np.asarray(x, np.float32)
  if kind == 'image':
    return 0.0, 1.0
  if kind == 'masked_sequence':
    x = x[..., :-1][x[..., -1] > 0.5]
  return float(x.min()), float(x.max())


def image_grid(true_xs: Sequence[np.ndarray],
               recon_from_each: Sequence[Sequence[np.ndarray]], *,
               pad: int = 2) -> np.ndarray:
  """Lays out cross-modal reconstructions of CHW pictures as one uint8 image.

  Row 0 shows the true pictures of each target modality; row 1 + m shows
  the reconstructions from source m alone. Column n holds target modality n
  (its pictures may differ in size from another column's: a row is as tall
  as its tallest, shorter cells padded white below); each cell holds the
  same k examples side by side, `pad` white pixels apart, and cells are
  2 * pad apart.

  Args:
    true_xs: per modality [k, C_n, H_n, W_n] in [0, 1], C_n in {1, 3}.
    recon_from_each: [M_src][M_dst] arrays shaped as true_xs[dst].
    pad: gap in pixels.

  Returns:
    [(M_src + 1) * max H + M_src * 2 * pad,
     sum_n (k * W_n + (k - 1) * pad) + (M_dst - 1) * 2 * pad, 3] uint8.
  """
  rows = [list(true_xs)] + [list(r) for r in recon_from_each]
  k = np.shape(true_xs[0])[0]
  height = max(np.shape(x)[2] for x in true_xs)
  for row in rows:
    chex.assert_equal(len(row), len(true_xs))
    for cell, true in zip(row, true_xs):
      chex.assert_shape(cell, (k, None, *np.shape(true)[2:]))

  def to_hwc(img):                       # [C, H, W] float -> [H, W, 3] uint8
    img = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
    c, h, w = img.shape
    img = np.broadcast_to(img, (3, h, w)) if c == 1 else img
    out = np.full((height, w, 3), 255, np.uint8)
    out[:h] = np.round(np.transpose(img, (1, 2, 0)) * 255).astype(np.uint8)
    return out

  def hcat(parts, gap):
    white = np.full((parts[0].shape[0], gap, 3), 255, np.uint8)
    out = [parts[0]]
    for p in parts[1:]:
      out += [white, p]
    return np.concatenate(out, 1)

  def vcat(parts, gap):
    white = np.full((gap, parts[0].shape[1], 3), 255, np.uint8)
    out = [parts[0]]
    for p in parts[1:]:
      out += [white, p]
    return np.concatenate(out, 0)

  lines = [hcat([hcat([to_hwc(img) for img in cell], pad) for cell in row],
                2 * pad) for row in rows]
  return vcat(lines, 2 * pad)
