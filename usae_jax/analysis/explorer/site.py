"""The explorer's JSON export and static site (no server, no CDN; opens from ``file://``).

:func:`explorer_documents` turns the measures into JSON-ready documents (schema:
``docs/explorer.md``); :func:`write_site` writes them as

- ``json/index.json`` and ``json/concepts/<id>.json`` (the export other viewers read),
- ``data/index.js`` and ``data/c/<id>.js`` (the same documents wrapped in a script, because
  browsers refuse ``fetch()`` of local files: pages load them with ``<script>`` tags),
- ``index.html``, ``concept.html`` and ``assets/`` (hand-written JS and CSS, package data).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from usae_jax.analysis.explorer.measures import ConceptPass, ExplorerConfig, concept_table
from usae_jax.analysis.explorer.media import RowTexts
from usae_jax.analysis.statistics import ConceptStatistics

SCHEMA = "usae-explorer/1"
PAGES = ("index.html", "concept.html")
ASSETS = ("explorer.js", "explorer.css")


def _num(value, digits: int = 6):
    """JSON-ready number: ints stay ints, floats keep ``digits`` significant digits, NaN/inf
    become None."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _list(values, digits: int = 6) -> list:
    return [_num(v, digits) for v in np.ravel(values)]


@dataclasses.dataclass(frozen=True)
class ExplorerInputs:
    """Everything a site is built from (measures plus optional media). Shapes: ``M`` models,
    ``n`` concepts, ``p`` co-firing partners, ``q`` neighbours."""

    run: dict
    """Run metadata shown in the header (workdir, step, architecture, sparsity, ...)."""

    statistics: ConceptStatistics
    """The analysis statistics of the run."""

    concept_pass: ConceptPass
    """Firing histograms and co-firing partners."""

    neighbours: tuple[np.ndarray, np.ndarray]
    """``(ids [M, n, q], cosines [M, n, q])`` nearest concepts in each model's dictionary."""

    labels: Sequence[str] | None = None
    """``[n]`` a text label per concept (e.g. the planted match: shared/specific/packed)."""

    label_details: Mapping[str, Sequence[str]] | None = None
    """``{model: [n]}`` per-model label detail (e.g. "shared:12")."""

    extra_columns: Mapping[str, Sequence[float | None]] | None = None
    """``{column: [n]}`` more numbers per concept (e.g. a splice effect), shown when given."""

    images: Mapping[int, Mapping[str, list[dict]]] | None = None
    """``{concept: {model: [{"src", "image", "max"}]}}`` from ``media.image_panels``."""

    cam: Mapping[int, list[dict]] | None = None
    """``{concept: [{"src", "label", "final_pre"}]}`` from ``media.cam_panels``."""

    texts: RowTexts | None = None
    """The text of each row, for text streams."""


def explorer_documents(inputs: ExplorerInputs, config: ExplorerConfig):
    """``(index document, iterator of (concept id, concept document))``, JSON-ready."""
    statistics = inputs.statistics
    names = list(statistics.model_names)
    n = statistics.fire_counts.shape[1]
    table = concept_table(statistics, config)
    unique = [names[u] if u >= 0 else None for u in table["unique_to"]]
    extra = {k: list(v) for k, v in (inputs.extra_columns or {}).items()}
    for key, values in extra.items():
        if len(values) != n:
            raise ValueError(f"extra column {key!r} has {len(values)} values for {n} concepts")
    if inputs.labels is not None and len(inputs.labels) != n:
        raise ValueError(f"labels has {len(inputs.labels)} entries for {n} concepts")
    concepts = {
        "id": list(range(n)),
        "energy": _list(table["energy"]),
        "firing_entropy": _list(table["firing_entropy"], 4),
        "cofire_count": _list(table["cofire_count"]),
        "cofire_proportion": _list(table["min_cofire_proportion"], 4),
        "unique_to": unique,
        "firing_rate": {name: _list(table["firing_rate"][m], 4) for m, name in enumerate(names)},
        "extra": {k: _list([np.nan if v is None else v for v in vs]) for k, vs in extra.items()},
    }
    if inputs.labels is not None:
        concepts["label"] = [str(label) for label in inputs.labels]
    index = {
        "schema": SCHEMA,
        "run": inputs.run,
        "models": names,
        "num_concepts": n,
        "num_rows": statistics.num_rows,
        "tau": statistics.tau,
        "unique_share": config.unique_share,
        "page_rows": config.page_rows,
        "has_images": bool(inputs.images),
        "has_text": inputs.texts is not None,
        "has_cam": bool(inputs.cam),
        "concepts": concepts,
    }

    def concept_document(c: int) -> dict:
        passed = inputs.concept_pass
        total_fires = max(int(statistics.fire_counts[:, c].sum()), 1)
        per_model = {}
        for m, name in enumerate(names):
            keep = statistics.top_values[m, c] > 0
            rows = statistics.top_rows[m, c][keep][: config.num_examples]
            values = statistics.top_values[m, c][keep][: config.num_examples]
            examples = []
            for row, value in zip(rows.tolist(), values.tolist(), strict=True):
                example = {"row": int(row), "value": _num(value, 5)}
                if inputs.texts is not None:
                    example["text"] = inputs.texts.context(int(row))
                examples.append(example)
            edges = np.linspace(
                statistics.tau, passed.histogram_max[m, c], config.histogram_bins + 1
            )
            ids, cosines = inputs.neighbours
            per_model[name] = {
                "fire_count": int(statistics.fire_counts[m, c]),
                "firing_rate": _num(table["firing_rate"][m, c], 5),
                "cofire_proportion": _num(table["cofire_proportion"][m, c], 4),
                "energy": _num(statistics.energy[m, c]),
                "energy_share": _num(table["energy_share"][m, c], 4),
                "mean_activation": _num(table["mean_activation"][m, c], 5),
                "top_examples": examples,
                "images": list((inputs.images or {}).get(c, {}).get(name, [])),
                "histogram": {
                    "counts": passed.histogram[m, c].tolist(),
                    "edges": _list(edges, 4),
                },
                "nearest": [
                    {"concept": int(i), "cosine": _num(s, 4)}
                    for i, s in zip(ids[m, c], cosines[m, c], strict=True)
                ],
            }
            if inputs.label_details is not None:
                per_model[name]["label"] = str(inputs.label_details[name][c])
        document = {
            "schema": SCHEMA,
            "concept": c,
            "num_concepts": n,
            "models": names,
            "energy": concepts["energy"][c],
            "firing_entropy": concepts["firing_entropy"][c],
            "cofire_count": concepts["cofire_count"][c],
            "cofire_proportion": concepts["cofire_proportion"][c],
            "unique_to": unique[c],
            "extra": {k: v[c] for k, v in concepts["extra"].items()},
            "per_model": per_model,
            "cofiring": [
                {"concept": int(p), "count": int(k), "proportion": _num(k / total_fires, 4)}
                for p, k in zip(passed.partners[c], passed.partner_counts[c], strict=True)
                if p >= 0
            ],
            "cam": list((inputs.cam or {}).get(c, [])),
        }
        if inputs.labels is not None:
            document["label"] = concepts["label"][c]
        return document

    return index, ((c, concept_document(c)) for c in range(n))


def _compact(document: dict) -> str:
    return json.dumps(document, separators=(",", ":"))


def write_site(out_dir: str | os.PathLike, inputs: ExplorerInputs, config: ExplorerConfig) -> dict:
    """Write the site and the JSON export into ``out_dir`` (images must already be under
    ``out_dir/img``). Returns ``{"files": count, "bytes": total size, "index": path}``."""
    out = Path(out_dir)
    for sub in ("data/c", "assets") + (("json/concepts",) if config.write_json else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    index, documents = explorer_documents(inputs, config)
    text = _compact(index)
    (out / "data" / "index.js").write_text(f"window.USAE_EXPLORER_INDEX = {text};\n")
    if config.write_json:
        (out / "json" / "index.json").write_text(text)
    for c, document in documents:
        text = _compact(document)
        (out / "data" / "c" / f"{c}.js").write_text(f"USAE_EXPLORER.receive({text});\n")
        if config.write_json:
            (out / "json" / "concepts" / f"{c}.json").write_text(text)
    package = resources.files("usae_jax.analysis.explorer") / "assets"
    for name in PAGES:
        (out / name).write_text((package / name).read_text())
    for name in ASSETS:
        with resources.as_file(package / name) as path:
            shutil.copyfile(path, out / "assets" / name)
    files = [p for p in out.rglob("*") if p.is_file()]
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "index": os.fspath(out / "index.html"),
    }
