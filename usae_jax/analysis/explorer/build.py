"""Build the explorer site of a trained run: restore, measure, draw, write.

``build_explorer(workdir, source, out_dir, ...)`` restores the newest checkpoint in ``workdir``
(USAE or SPARC), streams ``source`` twice (the analysis statistics, then the explorer's own
histograms and co-firing pass), draws image crops and CAM images when given, and writes the
site and its JSON export (:mod:`usae_jax.analysis.explorer.site`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from usae_jax.analysis import universality as uni
from usae_jax.analysis.diffing import model_diffing
from usae_jax.analysis.examples import ImageTokens
from usae_jax.analysis.explorer import media
from usae_jax.analysis.explorer.measures import (
    ExplorerConfig,
    concept_pass,
    diffing_columns,
    nearest_concepts,
    unit_dictionaries,
)
from usae_jax.analysis.explorer.site import ExplorerInputs, write_site
from usae_jax.analysis.load import load_run
from usae_jax.analysis.statistics import RowSource, compute_statistics
from usae_jax.data import images as image_sources
from usae_jax.data.store import Store
from usae_jax.data.synthetic.planted import PlantedData
from usae_jax.data.text import template_sentences

DIFFING_ROWS = 4096
"""Rows (from the start of the source) the model-diffing columns are measured on."""


class IndexedSource:
    """A row source that also accepts slices (the statistics read ``slice(start, stop)``; a
    store-backed source reads sorted index arrays only)."""

    def __init__(self, source):
        self._source = source

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._source.names)

    @property
    def num_rows(self) -> int:
        return int(self._source.num_rows)

    def rows(self, indices: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Standardised rows ``{name: float32 [len(indices), width]}``."""
        if isinstance(indices, slice):
            indices = np.arange(*indices.indices(self.num_rows))
        return self._source.rows(np.asarray(indices))


def read_columns(path: str | os.PathLike, num_concepts: int) -> dict[str, list]:
    """Extra per-concept columns from a JSON file ``{column: [n numbers or null]}`` (or
    ``{column: {model: [n]}}``, which becomes one column per model ``column:model``)."""
    with open(path) as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{column: [n values]}}")
    out = {}
    for key, values in data.items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for model, column in items:
            name = key if model is None else f"{key}:{model}"
            if not isinstance(column, list) or len(column) != num_concepts:
                raise ValueError(
                    f"{path}: column {name!r} must be a list of {num_concepts} values (one per "
                    f"concept, null where missing)"
                )
            out[name] = column
    return out


def read_cam(prefix: str) -> tuple[dict, np.ndarray]:
    """A CAM run's ``(PREFIX.json report, PREFIX.npz images [C, P, S, S, 3])``."""
    with open(prefix + ".json") as handle:
        report = json.load(handle)
    with np.load(prefix + ".npz") as data:
        images = np.asarray(data["images"], np.float32)
    return report, images


def store_image_tokens(store: Store, images: str | None = None) -> ImageTokens | None:
    """Where each row of an image store sits: rows ``i * T .. (i + 1) * T - 1`` are image i's
    ``T`` grid cells in row-major order.

    Args:
      store: an activation store of image tokens (``experiments/extract.py``).
      images: the images it was extracted from: a folder or list file (as ``extract.py``
        ``--images``), or None to rebuild the offline sample set when the manifest says the
        store was made from it (``None`` is returned for other stores: no crops).
    """
    manifest = store.manifest
    meta = manifest.get("meta", {})
    described = meta.get("images", {})
    size = int(described.get("size", 224))
    if images is None:
        if described.get("kind") != "sample":
            return None
        source = image_sources.from_samples(
            size, views=int(described["views"]), seed=int(described["seed"])
        )
    elif os.path.isdir(images):
        source = image_sources.from_folder(images, size)
    else:
        source = image_sources.from_list(images, size)
    count, per_image = len(manifest["image_ids"]), int(manifest["tokens_per_image"])
    if source.ids[:count] != list(manifest["image_ids"]):
        raise ValueError(f"the images given ({images or 'sample set'}) are not the store's images")
    return ImageTokens(
        image_index=np.repeat(np.arange(count), per_image),
        grid=tuple(manifest["grid"]),
        images=lambda i: source.load(i).astype(np.float32) / 255.0,
    )


def sentence_texts(spec: str) -> media.RowTexts:
    """Row texts of a pooled text run: ``templates:COUNT:SEED`` (the built-in template
    sentences of ``experiments/sparc_text.py``) or a file with one item per line."""
    if spec.startswith("templates:"):
        _, count, seed = spec.split(":")
        return media.RowTexts.from_sentences(template_sentences(int(count), int(seed)))
    with open(spec) as handle:
        return media.RowTexts.from_sentences([line.rstrip("\n") for line in handle])


def build_explorer(
    workdir: str | os.PathLike,
    source: RowSource,
    out_dir: str | os.PathLike | None = None,
    config: ExplorerConfig | None = None,
    *,
    planted: PlantedData | None = None,
    tokens: ImageTokens | None = None,
    texts: media.RowTexts | None = None,
    cam: Sequence[str] = (),
    extra_columns: Mapping[str, Sequence[float | None]] | str | os.PathLike | None = None,
    title: str | None = None,
) -> dict:
    """Write the explorer site of the run in ``workdir`` to ``out_dir`` (default
    ``workdir/explorer``).

    Args:
      workdir: a training workdir (``config.json`` and checkpoints), USAE or SPARC.
      source: the paired rows the run was trained on (standardised as in training), e.g.
        ``ArraySource(arrays)`` or a ``StoreSource``.
      config: what to compute and show.
      planted: the planted data of a planted run: concepts get planted labels.
      tokens: where each row sits in its image: concept pages get image crops with heatmaps.
      texts: the text of each row: concept pages show the top rows' text.
      cam: CAM output prefixes (``experiments/cam.py --out``): their images are shown.
      extra_columns: ``{column: [n]}`` more numbers per concept (e.g. splice effects), or a
        JSON file of them (:func:`read_columns`).
      title: shown in the header (default: the workdir).

    Returns:
      ``{"out_dir", "index", "files", "bytes", "seconds", "num_concepts"}``.
    """
    started = time.perf_counter()
    config = config or ExplorerConfig()
    out = Path(out_dir or os.path.join(workdir, "explorer"))
    out.mkdir(parents=True, exist_ok=True)
    run_config, params, stats, step = load_run(workdir)
    usae = run_config.usae
    source = IndexedSource(source)
    if source.names != usae.model_names:
        raise ValueError(f"source models {source.names} differ from the run's {usae.model_names}")
    statistics = compute_statistics(usae, params, stats, source, config.statistics)
    passed = concept_pass(usae, params, stats, source, statistics, config)
    dictionaries = unit_dictionaries(usae, params)
    neighbours = nearest_concepts(dictionaries, config.num_neighbours)
    if isinstance(extra_columns, (str, os.PathLike)):
        extra_columns = read_columns(extra_columns, usae.num_concepts)
    rows = np.arange(min(source.num_rows, DIFFING_ROWS))
    diffing = model_diffing(usae, params, stats, source.rows(rows))
    extra_columns = {**diffing_columns(diffing), **(extra_columns or {})}
    labels = details = None
    if planted is not None:
        found = uni.label_planted_concepts(
            params, usae.model_names, planted.shared_directions, planted.specific_directions
        )
        labels = [str(label) for label in found["labels"]]
        details = {n: [str(x) for x in found["matches"][m]] for m, n in enumerate(usae.model_names)}
    images = None
    if tokens is not None:
        ranked = np.argsort(-statistics.total_energy, kind="stable")
        firing = ranked[statistics.fire_counts.sum(axis=0)[ranked] > 0]
        chosen = firing if config.image_concepts is None else firing[: config.image_concepts]
        images = media.image_panels(
            usae,
            params,
            stats,
            source,
            tokens,
            statistics,
            [int(c) for c in chosen],
            out,
            num_images=config.num_images,
            side=config.image_px,
            crop_patches=config.crop_patches,
        )
    cam_images: dict[int, list[dict]] = {}
    for i, prefix in enumerate(cam):
        report, pictures = read_cam(prefix)
        tag = f"{i}_{Path(prefix).name}"
        for concept, items in media.cam_panels(report, pictures, out, tag, 224).items():
            cam_images.setdefault(concept, []).extend(items)
    run = {
        "title": title or os.fspath(workdir),
        "workdir": os.fspath(workdir),
        "step": step,
        "architecture": usae.architecture,
        "sparsity": usae.sparsity,
        "top_k": usae.top_k,
        "cam": [os.fspath(p) for p in cam],
    }
    inputs = ExplorerInputs(
        run=run,
        statistics=statistics,
        concept_pass=passed,
        neighbours=neighbours,
        labels=labels,
        label_details=details,
        extra_columns=extra_columns,
        images=images,
        cam=cam_images or None,
        texts=texts,
    )
    written = write_site(out, inputs, config)
    return {
        "out_dir": os.fspath(out),
        **written,
        "num_concepts": usae.num_concepts,
        "seconds": round(time.perf_counter() - started, 1),
    }
