"""One command from packaged photographs to a cross-network USAE, its held-out analysis, CAM
images and explorer site (what ``experiments/real_networks.py`` runs).

Stages, each skipped when its output exists and is complete (so an interrupted run resumes;
once a stage runs, every later stage runs too):

1. ``images``: gather the image set (:mod:`usae_jax.data.gather`), or take a gathered folder
   (``train.txt`` / ``held_out.txt``), or gather any folder of images without apt.
2. ``extract``: seeded multi-crop views of every image through every network, one named layer
   each, on the common token grid, into two paired stores: ``store/train`` (training images
   only) and ``store/held_out`` (held-out images only). The split is by image, never by view.
3. ``train``: a USAE on ``store/train`` (auto-resuming).
4. ``analyze``: the held-out rows only, standardised with the training store's statistics: R²
   (both centrings), co-firing, firing entropy, universality vs importance, the independent-SAE
   baseline and the concepts unique to each network, the controls (broken pairing, noise); the
   baselines and controls train on a sample of training rows and are measured on held-out rows.
5. ``cam``: CAM images of the top universal concepts in every network and of the top unique
   concept of each network in that network.
6. ``explore``: the explorer site of the run on the held-out views (and its screenshots).

``stages.json`` (:mod:`usae_jax.pipelines.stages`) keeps what each stage took;
``summary.json`` (:mod:`usae_jax.pipelines.real_networks_summary`) every number.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from usae_jax.analysis import load
from usae_jax.analysis.cam import optimize as cam
from usae_jax.analysis.cam import output as cam_output
from usae_jax.analysis.examples import ImageTokens
from usae_jax.analysis.explorer import browser
from usae_jax.analysis.explorer.build import build_explorer
from usae_jax.analysis.explorer.measures import ExplorerConfig
from usae_jax.analysis.report import AnalysisConfig, analyze
from usae_jax.backbones.registry import load_backbone
from usae_jax.config import TrainConfig
from usae_jax.data import extract as ex
from usae_jax.data import images as image_sources
from usae_jax.data.gather import GatherConfig, gather
from usae_jax.data.loader import StoreSource, manifest_standardisation
from usae_jax.data.store import Store, read_manifest
from usae_jax.pipelines import real_networks_summary as summaries
from usae_jax.pipelines.stages import Stages, peak_memory_mb
from usae_jax.pipelines.train_and_report import train_and_report
from usae_jax.validation import require

STAGES = ("images", "extract", "train", "analyze", "cam", "explore")
SPLITS = ("train", "held_out")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Network:
    """One network of the run: a registry backbone read at one named layer."""

    name: str
    """Model name in the store and the USAE (also the backbone's key)."""
    spec: str
    """Backbone spec for :func:`usae_jax.backbones.registry.load_backbone`."""
    layer: str
    """The layer whose feature map (or patch tokens) becomes the model's tokens."""
    description: str = ""
    """What the network is, for the report (e.g. "self-supervised ViT")."""

    def __post_init__(self):
        for field in ("name", "spec", "layer"):
            require(bool(getattr(self, field)), field, getattr(self, field), "must not be empty")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RealNetworksConfig:
    """Everything one run does; ``budget`` names the sizing (see ``experiments/configs``)."""

    budget: str
    """Name of this sizing (``"small"``, ``"default"``), recorded in the summary."""
    networks: tuple[Network, ...]
    """The networks, in store order (at least two)."""
    gather: GatherConfig = dataclasses.field(default_factory=GatherConfig)
    """How the image set is gathered when no ``images`` folder is given."""
    image_size: int = 224
    """Side in pixels of every view (each backbone resizes to its own input size)."""
    grid: int = 14
    """Side of the common token grid every network's tokens are resampled to."""
    train_views: int = 8
    """Views per training image (view 0 is the centre crop, the others seeded random crops)."""
    held_out_views: int = 4
    """Views per held-out image."""
    view_seed: int = 0
    """Seed of the random crops and flips."""
    batch_images: int = 16
    """Images per extraction forward pass."""
    chunk_images: int = 128
    """Images per committed store chunk (the unit an interrupted extraction resumes from)."""
    train: TrainConfig
    """The USAE recipe (model names and widths are bound from the store)."""
    analysis: AnalysisConfig
    """Held-out analysis: statistics, independent-SAE baseline, controls."""
    analysis_train_rows: int = 65_536
    """Training rows (seeded sample) the independent SAEs and control USAEs train on."""
    cam: cam.CAMConfig = dataclasses.field(default_factory=cam.CAMConfig)
    """CAM settings (shared by the universal and the unique concepts)."""
    cam_universal: int = 3
    """Top universal concepts (firing entropy >= the analysis' threshold, by energy) drawn by CAM
    in every network."""
    cam_unique: int = 1
    """Top concepts unique to each network (>= the baseline's share of firings, by energy) drawn
    by CAM in that network."""
    explorer: ExplorerConfig = dataclasses.field(default_factory=ExplorerConfig)
    """Explorer settings."""
    screenshot: bool = True
    """Save screenshots of the explorer (headless Debian chromium); False on machines without."""

    def __post_init__(self):
        object.__setattr__(self, "networks", tuple(self.networks))
        names = [n.name for n in self.networks]
        require(
            len(names) >= 2 and len(set(names)) == len(names),
            "networks",
            names,
            "need at least two networks with unique names",
        )
        positive = {
            "image_size": self.image_size,
            "grid": self.grid,
            "train_views": self.train_views,
            "held_out_views": self.held_out_views,
            "batch_images": self.batch_images,
            "chunk_images": self.chunk_images,
            "analysis_train_rows": self.analysis_train_rows,
        }
        for field, value in positive.items():
            require(value >= 1, field, value, "must be >= 1")
        require(self.cam_universal >= 0, "cam_universal", self.cam_universal, "must be >= 0")
        require(self.cam_unique >= 0, "cam_unique", self.cam_unique, "must be >= 0")


@dataclasses.dataclass
class Paths:
    """Where a run keeps its outputs."""

    workdir: Path
    images: Path

    def store(self, split: str) -> Path:
        return self.workdir / "store" / split

    @property
    def usae(self) -> Path:
        return self.workdir / "usae"

    @property
    def analysis(self) -> Path:
        return self.workdir / "analysis"

    @property
    def cam(self) -> Path:
        return self.workdir / "cam"

    @property
    def explorer(self) -> Path:
        return self.workdir / "explorer"


def _gathered(folder: Path) -> bool:
    return (folder / "held_out.txt").exists() and (folder / "train.txt").exists()


def _store_complete(path: Path) -> bool:
    try:
        return bool(read_manifest(path).get("complete"))
    except (FileNotFoundError, ValueError):
        return False


def view_source(config: RealNetworksConfig, paths: Paths, split: str):
    """The seeded views of one split's images (what its store was extracted from)."""
    views = config.train_views if split == "train" else config.held_out_views
    return image_sources.views_from_list(
        paths.images / f"{split}.txt", config.image_size, views, config.view_seed
    )


def base_image(view_id: str) -> str:
    """``"images/x.jpg#3" -> "images/x.jpg"``."""
    return view_id.rpartition("#")[0]


def check_lists(paths: Paths) -> None:
    """Refuse an image set whose ``train.txt`` and ``held_out.txt`` share an image."""
    lists = [(paths.images / f"{s}.txt").read_text().split() for s in SPLITS]
    both = set(lists[0]) & set(lists[1])
    if both:
        raise ValueError(f"{len(both)} images are in both splits, e.g. {min(both)}")


def check_split(paths: Paths) -> dict:
    """The stores' image counts; raises if an image is in both splits."""
    ids = {s: read_manifest(paths.store(s))["image_ids"] for s in SPLITS}
    train, held = ({base_image(i) for i in ids[s]} for s in SPLITS)
    if train & held:
        raise ValueError(f"{len(train & held)} images are in both splits, e.g. {min(train & held)}")
    return {f"{s}_views": len(ids[s]) for s in SPLITS} | {
        "train_images": len(train),
        "held_out_images": len(held),
    }


def held_out_tokens(config: RealNetworksConfig, paths: Paths) -> ImageTokens:
    """Where each held-out row sits: its view image and grid cell."""
    manifest = read_manifest(paths.store("held_out"))
    source = view_source(config, paths, "held_out")
    if source.ids != list(manifest["image_ids"]):
        raise ValueError("the held-out images no longer match store/held_out; delete it")
    return ImageTokens(
        image_index=np.repeat(np.arange(len(source)), int(manifest["tokens_per_image"])),
        grid=tuple(manifest["grid"]),
        images=lambda i: source.load(i).astype(np.float32) / 255.0,
    )


def training_sample(store: Store, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Raw rows ``{name: [min(rows, N), width]}`` at sorted seeded random indices."""
    count = min(rows, store.num_rows)
    index = np.sort(np.random.default_rng(seed).choice(store.num_rows, count, replace=False))
    return {name: store.read(name, index) for name in store.names}


def run(
    config: RealNetworksConfig,
    workdir: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    backbone_loader: Callable[[str], object] = load_backbone,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) every stage in ``workdir``; write and return ``summary.json``.

    Args:
      images: a gathered image set (a folder with ``train.txt`` and ``held_out.txt``) or any
        folder of images (gathered here without apt); None gathers with ``config.gather``.
      backbone_loader: ``spec -> backbone`` (tests pass tiny random networks); called only by
        the stages that run a network.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    given = Path(images) if images is not None else None
    paths = Paths(workdir, given if given is not None and _gathered(given) else workdir / "images")
    stages = Stages(workdir, STAGES, log)
    backbones: dict[str, object] = {}

    def backbone(network: Network):
        if network.name not in backbones:
            backbones[network.name] = backbone_loader(network.spec)
        return backbones[network.name]

    def gather_images():
        gather_config = config.gather
        if given is not None:
            gather_config = dataclasses.replace(
                gather_config, packages=(), folders=(os.fspath(given),), samples=False, apt=False
            )
        manifest = gather(gather_config, paths.images)
        log(f"  {manifest['counts']}")
        return {"counts": manifest["counts"]}

    stages.run("images", lambda: _gathered(paths.images), gather_images)

    check_lists(paths)

    def extract_stores():
        models = tuple(ex.ModelChoice(name=n.name, backbone=n.name, layer=n.layer)
                       for n in config.networks)  # fmt: skip
        nets = {n.name: backbone(n) for n in config.networks}
        for split in SPLITS:
            extract_config = ex.ExtractConfig(
                models=models,
                grid=(config.grid, config.grid),
                batch_images=config.batch_images,
                chunk_images=config.chunk_images,
            )
            source = view_source(config, paths, split)
            log(f"  {split}: {len(source)} views")
            ex.extract(extract_config, nets, source, os.fspath(paths.store(split)))
        return check_split(paths)

    stages.run(
        "extract", lambda: all(_store_complete(paths.store(s)) for s in SPLITS), extract_stores
    )
    check_split(paths)
    train_store = Store(paths.store("train"), verify=False)
    names = tuple(n.name for n in config.networks)
    standardisation = manifest_standardisation(train_store, names)

    def train_usae():
        source = StoreSource(train_store, names=names)
        _, summary = train_and_report(config.train, paths.usae, source)
        return {"steps": summary["steps"], "train_seconds": summary["seconds"]}

    stages.run("train", lambda: (paths.usae / "summary.json").exists(), train_usae)

    def analyze_held_out():
        held = Store(paths.store("held_out"), verify=False)
        arrays = {name: held.array(name) for name in names}
        sample = training_sample(train_store, config.analysis_train_rows, config.train.seed)
        results = analyze(
            paths.usae,
            arrays,
            config.analysis,
            tokens=held_out_tokens(config, paths),
            out_dir=paths.analysis,
            train_arrays=sample,
            standardisation=standardisation,
        )
        return {"analysis_seconds": results["seconds"]}

    stages.run("analyze", lambda: (paths.analysis / "analysis.json").exists(), analyze_held_out)
    analysis = json.loads((paths.analysis / "analysis.json").read_text())
    chosen = summaries.cam_concepts(
        analysis, config.cam_universal, config.cam_unique, config.analysis
    )

    def draw_cam():
        paths.cam.mkdir(parents=True, exist_ok=True)
        run_config, params, stats, step = load.load_run(paths.usae)
        context = load.store_context(paths.store("train"))
        models = {
            n.name: cam.CAMModel(
                n.name, backbone(n), n.layer, context["models"][n.name]["mean"],
                context["models"][n.name]["std"],
            )
            for n in config.networks
        }  # fmt: skip
        held = StoreSource(paths.store("held_out"), names=names, standardisation=standardisation)
        jobs = [("universal", names, chosen["universal"])]
        jobs += [(f"unique_{n}", (n,), chosen["unique"][n]) for n in names]
        written = []
        for tag, members, concepts in jobs:
            if not concepts:
                log(f"  CAM {tag}: no concept qualifies")
                continue
            result = cam.run_cam(config.cam, [models[m] for m in members], run_config.usae,
                                 params, stats, context["grid"], concepts)  # fmt: skip
            natural = load.natural_image_maxima(
                run_config.usae, params, stats, held, int(held.store.manifest["tokens_per_image"]),
                concepts,
            )  # fmt: skip
            prefix = os.fspath(paths.cam / tag)
            cam_output.write_cam_outputs(
                result, config.cam, prefix, usae_step=step,
                title=f"CAM {tag}, USAE step {step}, {config.cam.steps} steps", natural=natural,
                image_ids=held.store.manifest["image_ids"],
            )  # fmt: skip
            log(f"  CAM {tag}: concepts {concepts} in {result.seconds:.0f} s")
            written.append(prefix)
        (paths.cam / "done.json").write_text(json.dumps({"prefixes": written}, indent=2))
        return {"prefixes": written}

    stages.run("cam", lambda: (paths.cam / "done.json").exists(), draw_cam)
    prefixes = json.loads((paths.cam / "done.json").read_text())["prefixes"]

    def build_site():
        held = StoreSource(paths.store("held_out"), names=names, standardisation=standardisation)
        built = build_explorer(
            paths.usae,
            held,
            paths.explorer,
            config.explorer,
            tokens=held_out_tokens(config, paths),
            cam=prefixes,
            title=f"USAE over {', '.join(names)} (held-out views, budget {config.budget})",
        )
        log(f"  explorer: {built['files']} files, {built['bytes'] / 1e6:.1f} MB, "
            f"built in {built['seconds']} s")  # fmt: skip
        record = {k: built[k] for k in ("files", "bytes", "seconds")}
        if config.screenshot:
            top = chosen["universal"][0] if chosen["universal"] else None
            shots = browser.screenshot_site(paths.explorer, paths.explorer / "screenshots", top)
            record["screenshots"] = shots
        (paths.explorer / "build.json").write_text(json.dumps(record, indent=2))
        return {"build": record}

    stages.run("explore", lambda: (paths.explorer / "build.json").exists(), build_site)
    summary = summaries.collect(config, paths, stages.records, chosen)
    summary["this_invocation"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "skipped": stages.skipped,
        "peak_rss_mb": peak_memory_mb(),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(summaries.headline(summary))
    return summary
