"""Model diffing per concept: relative decoder norms across M models, and latent scaling.

**Relative decoder norm** (Lindsey et al. 2024; two models: ``||d^B|| / (||d^A|| + ||d^B||)``,
about 0.5 for a shared concept, near 0 or 1 for an exclusive one). For ``M`` models each concept
gets shares ``r_m = s_m / sum_m' s_m'`` (summing to 1) of its strength ``s_m`` in model ``m``:

* crosscoder: ``s_m = ||D_m[c]||``, the raw decoder norm (the code is shared, so the norm is
  how much of the concept model ``m`` carries);
* USAE / SPARC: every dictionary row is used at unit norm, so the raw norm means nothing; the
  analogue is ``s_m = E_x[z_m(x)_c]``, the concept's mean code when model ``m`` encodes its own
  rows (its energy ``||E[z_c] D̂_c||`` in that model).

Classes, generalising the two-model bands to ``M``: *exclusive* to model ``m`` when
``r_m >= exclusive`` (0.9); *shared* when every ``|M r_m - 1| <= shared_band`` (0.4: for two
models ``r`` in [0.3, 0.7]); *partial* (``M > 2``) when some model is absent
(``r_m < (1 - exclusive) / (M - 1)``) but no model owns it; *in-between* otherwise; *unused*
when no model carries it (``sum s = 0``).

**Latent scaling** (Minder et al. 2025) asks how much of a concept the activations of each model
really carry, to flag exclusivity that the sparsity penalty made up (an L1 crosscoder can save
penalty by zeroing a decoder row that data would support). Minder et al. fit a scalar ``beta``
so that ``beta f_c(x) d_c`` best explains a model's reconstruction error with the concept added
back. Models of different widths share no direction, so we fit the whole vector instead::

    v_c^m = argmin_v sum_x ||f_c(x) v - (e_m(x) + f_c(x) d_c^m)||^2
          = d_c^m + sum_x f_c(x) e_m(x) / sum_x f_c(x)^2          [d_m]

with ``e_m = x_m - x̂_m`` the residual, ``f`` the code of the concept's *reference* model (the
one with the largest share; a crosscoder has one code) and ``d_c^m`` the row model ``m`` decodes
with. Its projection on any direction ``u`` is Minder's ``beta`` for that direction
(``u . v / ||u||^2``), so for two models in one space it reduces to theirs. We report
``nu_m = ||v_c^m|| / max_m' ||v_c^m'||``: about 1 where model ``m`` carries the concept as
strongly as its strongest model, about 0 where it does not. A concept classified exclusive or
partial by its decoder norms whose absent model has ``nu >= artefact_ratio`` (0.5) is flagged
as a likely artefact.

Shapes: ``M`` models, ``n`` concepts, ``N`` rows, ``d_m`` widths.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.config import USAEConfig
from usae_jax.model.inference import decode_eval, encode_models_eval
from usae_jax.model.usae import normalize_dictionary

CLASSES = ("unused", "shared", "in_between", "partial", "exclusive")
"""Class names; :attr:`ModelDiffing.classes` holds indices into this tuple."""


@dataclasses.dataclass(frozen=True)
class ModelDiffing:
    """Per-concept model-diffing measures."""

    model_names: tuple[str, ...]
    """The ``M`` models, in the order of the ``[M, n]`` arrays."""

    strength: np.ndarray
    """``[M, n]`` ``s_m``: raw decoder norm (crosscoder) or mean code on own rows (USAE)."""

    relative_norm: np.ndarray
    """``[M, n]`` shares ``r_m = s_m / sum s`` (0 for an unused concept)."""

    classes: np.ndarray
    """``[n]`` int index into :data:`CLASSES`."""

    exclusive_to: np.ndarray
    """``[n]`` int model index for exclusive concepts, -1 otherwise."""

    latent_scaling: np.ndarray
    """``[M, n]`` ``nu_m`` in [0, 1] (NaN where the reference code never fires)."""

    artefact: np.ndarray
    """``[n]`` bool: exclusive or partial by decoder norm, yet an absent model carries it."""

    def summary(self) -> dict:
        """Class counts, exclusive counts per model, artefact count (JSON-ready)."""
        counts = {name: int(np.sum(self.classes == i)) for i, name in enumerate(CLASSES)}
        exclusive = {
            name: int(np.sum(self.exclusive_to == m)) for m, name in enumerate(self.model_names)
        }
        return {"classes": counts, "exclusive_to": exclusive, "artefacts": int(self.artefact.sum())}

    def per_concept(self) -> dict:
        """Every array as lists (JSON-ready), keyed by measure then model."""

        def by_model(array, digits):
            return {
                name: [None if not np.isfinite(v) else round(float(v), digits) for v in array[m]]
                for m, name in enumerate(self.model_names)
            }

        return {
            "class": [CLASSES[i] for i in self.classes],
            "exclusive_to": [self.model_names[m] if m >= 0 else None for m in self.exclusive_to],
            "relative_norm": by_model(self.relative_norm, 4),
            "latent_scaling": by_model(self.latent_scaling, 4),
            "artefact": [bool(a) for a in self.artefact],
        }


def classify(
    shares: np.ndarray, *, exclusive: float = 0.9, shared_band: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """``(classes [n], exclusive_to [n])`` of shares ``[M, n]`` (columns sum to 1, or 0 for an
    unused concept); see the module docstring for the bands."""
    shares = np.asarray(shares, np.float64)
    num_models = shares.shape[0]
    used = shares.sum(axis=0) > 0
    absent_below = (1 - exclusive) / max(num_models - 1, 1)
    owner = np.argmax(shares, axis=0)
    is_exclusive = used & (shares.max(axis=0) >= exclusive)
    is_shared = used & (np.abs(num_models * shares - 1).max(axis=0) <= shared_band)
    is_partial = used & ~is_exclusive & (shares < absent_below).any(axis=0)
    classes = np.full(shares.shape[1], CLASSES.index("in_between"))
    classes[~used] = CLASSES.index("unused")
    classes[is_partial] = CLASSES.index("partial")
    classes[is_shared] = CLASSES.index("shared")
    classes[is_exclusive] = CLASSES.index("exclusive")
    return classes, np.where(is_exclusive, owner, -1)


def _atoms(usae: USAEConfig, model: dict) -> jax.Array:
    if usae.architecture == "crosscoder":
        return model["dictionary"]
    return normalize_dictionary(model["dictionary"])


@functools.partial(jax.jit, static_argnums=(0,))
def _sums(usae: USAEConfig, params: dict, stats: dict, batch: dict):
    """Mean codes ``[M, n]``, and per (source s, target m): ``sum_x f e_m`` ``[n, d_m]`` and
    ``sum_x f^2`` ``[n]`` with ``f`` the code of source ``s``."""
    names = usae.model_names
    encoded = encode_models_eval(usae, params, stats, batch)
    means = jnp.stack([jnp.mean(encoded[name].codes, axis=0) for name in names])
    cross, squares = {}, {}
    for source in names:
        codes = encoded[source].codes
        squares[source] = jnp.sum(jnp.square(codes), axis=0)
        for target in names:
            residual = batch[target] - decode_eval(usae, params["models"][target], encoded[source])
            cross[source, target] = codes.T @ residual
    return means, cross, squares


def model_diffing(
    usae: USAEConfig,
    params: dict,
    stats: dict,
    batch: dict[str, np.ndarray],
    *,
    exclusive: float = 0.9,
    shared_band: float = 0.4,
    artefact_ratio: float = 0.5,
) -> ModelDiffing:
    """The measures of the module docstring on one paired standardised batch ``{name: [N, d]}``.

    Each model is encoded with its own rule in eval mode (a crosscoder: its one joint code).
    """
    names = usae.model_names
    means, cross, squares = jax.device_get(
        _sums(usae, params, stats, {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()})
    )
    if usae.architecture == "crosscoder":
        strength = np.stack(
            [np.linalg.norm(np.asarray(params["models"][m]["dictionary"]), axis=1) for m in names]
        )
    else:
        strength = np.asarray(means, np.float64)
    totals = strength.sum(axis=0)
    shares = np.divide(strength, totals, out=np.zeros_like(strength), where=totals > 0)
    classes, exclusive_to = classify(shares, exclusive=exclusive, shared_band=shared_band)
    reference = np.argmax(shares, axis=0)
    fitted = np.full(strength.shape, np.nan)
    for m, target in enumerate(names):
        atoms = np.asarray(_atoms(usae, params["models"][target]), np.float64)
        for s, source in enumerate(names):
            chosen = reference == s
            denom = np.asarray(squares[source], np.float64)[chosen]
            vectors = (
                atoms[chosen]
                + np.asarray(cross[source, target])[chosen]
                / np.where(denom > 0, denom, 1.0)[:, None]
            )
            fitted[m, chosen] = np.where(denom > 0, np.linalg.norm(vectors, axis=1), np.nan)
    top = np.nanmax(np.where(np.isfinite(fitted), fitted, -np.inf), axis=0)
    nu = np.divide(fitted, top, out=np.full_like(fitted, np.nan), where=top > 0)
    absent = shares < (1 - exclusive) / max(len(names) - 1, 1)
    suspicious = np.isin(classes, [CLASSES.index("exclusive"), CLASSES.index("partial")])
    artefact = suspicious & (absent & (np.nan_to_num(nu) >= artefact_ratio)).any(axis=0)
    return ModelDiffing(names, strength, shares, classes, exclusive_to, nu, artefact)
