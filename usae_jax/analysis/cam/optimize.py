"""Coordinated Activation Maximization (CAM): images that make one USAE concept fire in each model.

For each concept ``c`` and model ``m`` we optimise an image ``x`` so that the concept's
activation, averaged over the ``T`` patch tokens, is large::

    pixels -> backbone_m -> layer tokens -> grid resample (as extraction does)
           -> (x - mean_m) / std_m (the store's standardisation) -> USAE encoder of m

end to end in JAX, differentiated with respect to the image. Choices (no official code exists):

* **Objective: the pre-ReLU BatchNorm output** (eval mode, running statistics), not the code.
  The ReLU has zero gradient wherever the concept is off, which is almost everywhere on a random
  start image, and the TopK mask also has zero gradient for every concept outside the kept ``k``.
  The pre-activation is the same affine function of the tokens that the code thresholds, so
  raising it raises ``relu`` and eventually enters the top ``k``; both numbers are reported.
* **Image parameterisation: MACO** (Fel et al. 2023). Only the Fourier *phase* is optimised; the
  magnitude is fixed to a natural-image ``1 / f**decay`` spectrum (per channel, ``decay = 1``
  by default: natural images' amplitude spectra fall roughly as ``1/f``). The spatial image is
  standardised, mixed by Lucid's decorrelated-colour matrix and squashed by a sigmoid to
  ``[0, 1]``. Fixing the magnitude keeps the energy at every frequency natural, so the
  optimiser cannot win with high-frequency noise.
* **Robustness**: each step the backbone sees a random view (translation, scale, rotation,
  mirror-padded, plus Gaussian pixel noise); a small total-variation penalty on the image.
* Optax Adam on the phases, all concepts batched, one jitted step.

``shared_image=True`` is the "same input" variant: one image per concept, optimised for the
sum over models of their activations.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from usae_jax.backbones.base import VisionBackbone
from usae_jax.backbones.cnn import ConvBackbone
from usae_jax.backbones.tokens import resample_grid
from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_eval
from usae_jax.model.usae import pre_activations
from usae_jax.validation import require

# Lucid's square root of the ImageNet colour correlation matrix (rows: R, G, B).
COLOR_CORRELATION = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
COLOR_CORRELATION = COLOR_CORRELATION / np.max(np.linalg.norm(COLOR_CORRELATION, axis=0))


@dataclasses.dataclass(kw_only=True, frozen=True)
class CAMConfig:
    """Settings of one CAM optimisation."""

    image_size: int = 224
    """Side of the optimised square image in pixels (views are resampled to each backbone's
    input size)."""

    steps: int = 128
    """Adam steps."""

    learning_rate: float = 0.05
    """Adam learning rate on the Fourier phases (radians)."""

    decay: float = 1.0
    """Exponent of the fixed ``1 / f**decay`` magnitude spectrum."""

    jitter: float = 8.0
    """Largest random translation per step, in pixels of the optimised image."""

    scale_range: tuple[float, float] = (0.9, 1.1)
    """Random zoom factor per step, uniform in this range (> 1 zooms in)."""

    rotation_degrees: float = 10.0
    """Largest random rotation per step, in degrees."""

    noise: float = 0.02
    """Standard deviation of Gaussian noise added to each view's pixels (in [0, 1] units)."""

    tv_weight: float = 0.05
    """Weight of the total-variation penalty (mean absolute neighbour difference per image)."""

    shared_image: bool = False
    """One image per concept for all models (the "same input" variant) instead of one per model."""

    seed: int = 0
    """Seed of the initial phases and of the per-step random views."""

    def __post_init__(self):
        object.__setattr__(self, "scale_range", tuple(float(s) for s in self.scale_range))
        require(self.image_size >= 8, "image_size", self.image_size, "must be >= 8")
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        for field in ("decay", "jitter", "noise", "tv_weight"):
            require(getattr(self, field) >= 0, field, getattr(self, field), "must be >= 0")
        require(
            len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
            "scale_range",
            self.scale_range,
            "must be (low, high) with 0 < low <= high",
        )
        require(
            0 <= self.rotation_degrees < 180,
            "rotation_degrees",
            self.rotation_degrees,
            "must be in [0, 180)",
        )


@dataclasses.dataclass(frozen=True, eq=False)
class CAMModel:
    """How one USAE model's activations are produced from pixels."""

    name: str
    """USAE model name (a key of ``params["models"]``)."""
    backbone: VisionBackbone | ConvBackbone
    """The network (a vision transformer or a CNN); models that are layers of one network should
    share the same object, so it runs once per image."""
    layer: str
    """Backbone layer the store was extracted from."""
    mean: float = 0.0
    """Store standardisation: scalar mean subtracted from the raw tokens."""
    std: float = 1.0
    """Store standardisation: scalar std the centred tokens are divided by."""


class CAMResult(NamedTuple):
    """Outcome of :func:`run_cam` for ``C`` concepts and ``M`` models (``P`` images per concept:
    ``M``, or 1 with ``shared_image``)."""

    images: np.ndarray
    """``[C, P, S, S, 3]`` float32 in [0, 1]."""
    concepts: np.ndarray
    """``[C]`` concept ids."""
    model_names: tuple[str, ...]
    """The ``M`` models, in column order."""
    start: np.ndarray
    """``[C, M]`` token-mean pre-activation of each concept on the initial images (model m reads
    its own image, or the shared one)."""
    final: np.ndarray
    """``[C, M]`` the same on the final images (no augmentation)."""
    final_codes: np.ndarray
    """``[C, M]`` token-mean of the concept's code (ReLU + TopK) on the final images."""
    history: np.ndarray
    """``[steps, C, M]`` the objective's activations on each step's random views."""
    seconds: float
    """Wall time of the optimisation, compilation included."""


def magnitude_spectrum(size: int, decay: float) -> jax.Array:
    """Fixed ``[S, S // 2 + 1]`` magnitude ``1 / max(f, 1/S)**decay`` (f in cycles per pixel),
    scaled so the image from any phase has unit pixel variance."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    magnitude = 1.0 / np.maximum(np.sqrt(fy**2 + fx**2), 1.0 / size) ** decay
    magnitude[0, 0] = 0.0  # the mean is set by the colour standardisation, not optimised
    return jnp.asarray(magnitude / np.sqrt(np.sum(magnitude**2)) * size, jnp.float32)


def phases_to_images(phases: jax.Array, magnitude: jax.Array) -> jax.Array:
    """Fourier phases ``[..., S, S // 2 + 1, 3]`` -> images ``[..., S, S, 3]`` in [0, 1]."""
    size = magnitude.shape[0]
    spectrum = magnitude[..., None] * jnp.exp(1j * phases)
    spatial = jnp.fft.irfft2(spectrum, s=(size, size), axes=(-3, -2), norm="ortho")
    spatial = spatial - jnp.mean(spatial, axis=(-3, -2), keepdims=True)
    spatial = spatial / (jnp.std(spatial, axis=(-3, -2), keepdims=True) + 1e-6)
    return jax.nn.sigmoid(spatial @ jnp.asarray(COLOR_CORRELATION).T * 2.0)


def total_variation(images: jax.Array) -> jax.Array:
    """Mean absolute difference of neighbouring pixels per image: ``[..., S, S, 3] -> [...]``."""
    dy = jnp.mean(jnp.abs(jnp.diff(images, axis=-3)), axis=(-3, -2, -1))
    dx = jnp.mean(jnp.abs(jnp.diff(images, axis=-2)), axis=(-3, -2, -1))
    return dy + dx


def random_views(key: jax.Array, images: jax.Array, size: int, config: CAMConfig) -> jax.Array:
    """Random affine views ``[B, S, S, 3] -> [B, size, size, 3]`` (bilinear, mirror padding)."""
    b, h, w, _ = images.shape
    k_scale, k_angle, k_shift, k_noise = jax.random.split(key, 4)
    scale = jax.random.uniform(
        k_scale, (b,), minval=config.scale_range[0], maxval=config.scale_range[1]
    )
    angle = jnp.deg2rad(config.rotation_degrees) * jax.random.uniform(k_angle, (b,), minval=-1)
    shift = 2 * config.jitter / h * jax.random.uniform(k_shift, (b, 2), minval=-1)
    axis = (jnp.arange(size) + 0.5) / size * 2 - 1
    gy, gx = jnp.meshgrid(axis, axis, indexing="ij")

    def view(image, s, a, t):
        cos, sin = jnp.cos(a), jnp.sin(a)
        y = ((cos * gy - sin * gx) / s + t[0] + 1) / 2 * h - 0.5
        x = ((sin * gy + cos * gx) / s + t[1] + 1) / 2 * w - 0.5
        channel = lambda c: jax.scipy.ndimage.map_coordinates(c, [y, x], order=1, mode="mirror")
        return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)

    out = jax.vmap(view)(images, scale, angle, shift)
    return jnp.clip(out + config.noise * jax.random.normal(k_noise, out.shape), 0.0, 1.0)


def centre_views(images: jax.Array, size: int) -> jax.Array:
    """The unaugmented view ``[B, S, S, 3] -> [B, size, size, 3]`` (antialiased resize)."""
    if images.shape[1] == size:
        return images
    return jax.image.resize(images, (images.shape[0], size, size, 3), "bilinear", antialias=True)


def normalise_pixels(backbone: VisionBackbone | ConvBackbone, pixels: jax.Array) -> jax.Array:
    """RGB pixels in [0, 1] ``[B, S, S, 3]`` -> the network's input, exactly as
    ``backbone.preprocess`` turns uint8 pixels (``255 * pixels``) into it: a CNN may want BGR
    channels and another pixel scale (open_nsfw, HED: BGR 0-255 minus the Caffe mean)."""
    if isinstance(backbone, ConvBackbone):
        pixels = pixels * 255.0
        if backbone.bgr:
            pixels = pixels[..., ::-1]
        pixels = pixels / backbone.pixel_scale
    return (pixels - jnp.asarray(backbone.mean)) / jnp.asarray(backbone.std)


def _groups(models: Sequence[CAMModel]) -> list[list[int]]:
    """Indices of models sharing one backbone object, in first-appearance order."""
    groups: dict[int, list[int]] = {}
    for index, model in enumerate(models):
        groups.setdefault(id(model.backbone), []).append(index)
    return list(groups.values())


def make_reader(models: Sequence[CAMModel], usae: USAEConfig, grid: Sequence[int]):
    """``read(weights, images [C, P, S, S, 3], concepts [C], view) -> (pre [C, M], codes [C, M])``.

    ``weights = (backbone params per group, usae params, batch stats)``; ``view(group_index,
    images [B, S, S, 3], size) -> pixels in [0, 1]`` picks the augmentation. ``pre`` is the
    token-mean BatchNorm output (eval mode) of concept ``concepts[c]``; ``codes`` the token-mean
    of its ReLU + TopK code. Model ``m`` reads image ``m`` (``P == M``) or image 0 (``P == 1``).
    """
    groups = _groups(models)
    grid = tuple(grid)

    def read(weights, images, concepts, view):
        backbone_params, params, stats = weights
        c, p = images.shape[:2]
        pre, codes = [None] * len(models), [None] * len(models)
        for g, members in enumerate(groups):
            backbone = models[members[0]].backbone
            picks = members if p > 1 else [0]
            batch = images[:, jnp.asarray(picks)].reshape(-1, *images.shape[2:])
            pixels = view(g, batch, backbone.image_size)
            pixels = normalise_pixels(backbone, pixels)
            layers = sorted({models[i].layer for i in members})
            tokens = backbone.patch_tokens(backbone_params[g], pixels, layers)
            for slot, index in enumerate(members):
                model = models[index]
                x = resample_grid(tokens[model.layer].astype(jnp.float32), grid)
                x = x.reshape(c, len(picks), -1, x.shape[-1])[:, slot if p > 1 else 0]
                x = ((x - model.mean) / model.std).reshape(-1, x.shape[-1])
                mp, st = params["models"][model.name], stats[model.name]
                z, _ = pre_activations(
                    mp, st, x, train=False, momentum=usae.batchnorm_momentum, eps=usae.batchnorm_eps
                )
                code = encode_eval(usae, mp, st, x).codes
                take = lambda a: jnp.take_along_axis(  # noqa: E731
                    a.reshape(c, -1, a.shape[-1]), concepts[:, None, None], axis=2
                )[..., 0].mean(axis=1)
                pre[index], codes[index] = take(z), take(jax.lax.stop_gradient(code))
        return jnp.stack(pre, axis=1), jnp.stack(codes, axis=1)

    return read


def run_cam(
    config: CAMConfig,
    models: Sequence[CAMModel],
    usae: USAEConfig,
    params: dict,
    batch_stats: dict,
    grid: Sequence[int],
    concepts: Sequence[int],
) -> CAMResult:
    """Optimise CAM images for ``concepts`` (all at once) in every model of ``models``.

    Args:
      params, batch_stats: the trained USAE (``params["models"][name]``, eval-mode statistics).
      grid: the common token grid of the store (e.g. ``(14, 14)``) the USAE was trained on.
    """
    started = time.perf_counter()
    if not models or not concepts:
        raise ValueError("need at least one model and one concept")
    concepts = jnp.asarray(concepts, jnp.int32)
    if int(concepts.min()) < 0 or int(concepts.max()) >= usae.num_concepts:
        raise ValueError(f"concepts must be in [0, {usae.num_concepts}): {concepts.tolist()}")
    groups = _groups(models)
    weights = ([models[g[0]].backbone.params for g in groups], params, batch_stats)
    read = make_reader(models, usae, grid)
    size = config.image_size
    magnitude = magnitude_spectrum(size, config.decay)
    per_concept = 1 if config.shared_image else len(models)
    init_key, key = jax.random.split(jax.random.key(config.seed))
    phases = jax.random.uniform(
        init_key,
        (len(concepts), per_concept, size, size // 2 + 1, 3),
        minval=-jnp.pi,
        maxval=jnp.pi,
    )
    optimizer = optax.adam(config.learning_rate)

    def loss_fn(phases, weights, step_key):
        images = phases_to_images(phases, magnitude)
        view = lambda g, b, s: random_views(jax.random.fold_in(step_key, g), b, s, config)  # noqa: E731
        pre, _ = read(weights, images, concepts, view)
        tv = jnp.sum(total_variation(images))
        return -jnp.sum(pre) + config.tv_weight * tv, pre

    @jax.jit
    def step(phases, opt_state, weights, step_key):
        (_, pre), grads = jax.value_and_grad(loss_fn, has_aux=True)(phases, weights, step_key)
        updates, opt_state = optimizer.update(grads, opt_state, phases)
        return optax.apply_updates(phases, updates), opt_state, pre

    @jax.jit
    def measure(phases, weights):
        images = phases_to_images(phases, magnitude)
        return read(weights, images, concepts, lambda g, b, s: centre_views(b, s))

    start, _ = measure(phases, weights)
    opt_state = optimizer.init(phases)
    history = []
    for i in range(config.steps):
        phases, opt_state, pre = step(phases, opt_state, weights, jax.random.fold_in(key, i))
        history.append(pre)
    final, final_codes = measure(phases, weights)
    images = phases_to_images(phases, magnitude)
    host = jax.device_get((images, start, final, final_codes, jnp.stack(history)))
    return CAMResult(
        images=np.asarray(host[0], np.float32),
        concepts=np.asarray(concepts),
        model_names=tuple(m.name for m in models),
        start=np.asarray(host[1]),
        final=np.asarray(host[2]),
        final_codes=np.asarray(host[3]),
        history=np.asarray(host[4]),
        seconds=time.perf_counter() - started,
    )
