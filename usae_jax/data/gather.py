"""A reproducible image set with a manifest: filter, deduplicate, split and store candidates.

The candidates come from :mod:`usae_jax.data.photo_sources` (Debian packages, scikit-image's and
scikit-learn's bundled photographs, user folders). Non-photographs are filtered out where easy:
tiny or extreme-aspect images, grey-scale images (calibration boards, scans), drawings and
diagrams (long runs of identical neighbouring pixels, or few distinct colours). Exact duplicates
(same pixels) are dropped; near duplicates are grouped: files of one folder whose names differ
only by a trailing number, an upper-case L/R/A/B, a size suffix, left/right or original/modified
(stereo pairs, image sequences, before/after pairs), and images whose 64-bit difference hashes
differ in at most a couple of bits (resized copies).

The held-out split is by image group, never by view: a group is held out when a hash of
``(seed, group)`` falls below ``held_out_fraction``, so the split of an image does not change when
other images are added. ``train.txt`` and ``held_out.txt`` list the stored files for
:func:`usae_jax.data.images.from_list`; ``manifest.json`` holds one record per image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from usae_jax.data.photo_sources import (
    DEBIAN_SOURCES,
    Candidate,
    PackageUnavailableError,
    debian_candidates,
    fetch_package,
    folder_candidates,
    sample_candidates,
)
from usae_jax.validation import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatherConfig:
    """What to gather and how to filter and split it."""

    packages: tuple[str, ...] = ("scratch", "opencv-doc", "mate-backgrounds",
                                 "lomiri-wallpapers-16.04")  # fmt: skip
    """Debian packages to take photographs from (keys of :data:`DEBIAN_SOURCES`)."""
    folders: tuple[str, ...] = ()
    """Extra folders of images (searched recursively)."""
    samples: bool = True
    """Include scikit-image's and scikit-learn's bundled photographs."""
    apt: bool = True
    """Download packages with ``apt-get``; ``False`` skips them (offline machines)."""
    cache_dir: str | None = None
    """Where ``.deb`` files are downloaded and extracted (default ``<workdir>/debs``)."""
    min_side: int = 128
    """Images whose shorter side is below this are rejected (icons, thumbnails)."""
    max_aspect: float = 4.0
    """Images longer than this ratio of their shorter side are rejected (banners)."""
    min_colour: float = 4.0
    """Mean |R - G| + |G - B| (0-255 scale, 64 x 64 thumbnail) below which an image is
    rejected as grey-scale."""
    max_flat: float = 0.33
    """Fraction of horizontally adjacent identical pixels (256 x 256 thumbnail) above which an
    image is rejected as a drawing or diagram."""
    min_colours: int = 64
    """Distinct 15-bit colours (64 x 64 thumbnail) below which an image is rejected."""
    near_duplicate_bits: int = 2
    """Images whose 64-bit difference hashes differ in at most this many bits share a group
    (besides the name rule of the module docstring)."""
    held_out_fraction: float = 0.2
    """Expected fraction of image groups held out."""
    seed: int = 0
    """Seed of the held-out split."""
    max_stored_side: int | None = 1024
    """Larger images are stored downscaled (Lanczos, JPEG quality 95); ``None`` copies as is."""

    def __post_init__(self):
        unknown = [p for p in self.packages if p not in DEBIAN_SOURCES]
        require(
            not unknown,
            "packages",
            self.packages,
            f"unknown packages {unknown}; known: {sorted(DEBIAN_SOURCES)}",
        )
        require(
            0.0 < self.held_out_fraction < 1.0,
            "held_out_fraction",
            self.held_out_fraction,
            "must be in (0, 1)",
        )
        require(self.min_side >= 1, "min_side", self.min_side, "must be >= 1")
        require(self.max_aspect >= 1.0, "max_aspect", self.max_aspect, "must be >= 1")
        require(0.0 < self.max_flat <= 1.0, "max_flat", self.max_flat, "must be in (0, 1]")
        require(
            self.max_stored_side is None or self.max_stored_side >= self.min_side,
            "max_stored_side",
            self.max_stored_side,
            f"must be None or at least min_side={self.min_side}",
        )
        require(
            0 <= self.near_duplicate_bits < 64,
            "near_duplicate_bits",
            self.near_duplicate_bits,
            "must be in [0, 64)",
        )
        require(self.min_colours >= 1, "min_colours", self.min_colours, "must be >= 1")


def photo_check(rgb, config: GatherConfig) -> str | None:
    """Why a PIL RGB image is not kept as a photograph, or ``None`` when it is."""
    from PIL import Image

    w, h = rgb.size
    if min(w, h) < config.min_side:
        return "too small"
    if max(w, h) > config.max_aspect * min(w, h):
        return "extreme aspect ratio"
    t = np.asarray(rgb.resize((64, 64), Image.BILINEAR), np.int32)
    spread = np.abs(t[..., 0] - t[..., 1]).mean() + np.abs(t[..., 1] - t[..., 2]).mean()
    if spread < config.min_colour:
        return "grey-scale"
    q = t >> 3
    if len(np.unique(q[..., 0] * 1024 + q[..., 1] * 32 + q[..., 2])) < config.min_colours:
        return "few colours"
    n = np.asarray(rgb.resize((256, 256), Image.NEAREST), np.int32)
    if (np.abs(np.diff(n, axis=1)).sum(-1) == 0).mean() > config.max_flat:
        return "flat areas (drawing or diagram)"
    return None


def dhash(rgb) -> int:
    """64-bit difference hash (9 x 8 grey thumbnail, left < right per pixel)."""
    from PIL import Image

    g = np.asarray(rgb.convert("L").resize((9, 8), Image.BILINEAR), np.int32)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def name_key(path: str) -> tuple[str, str]:
    """``(folder, stem)`` shared by files that are near duplicates by name: ``aloeL``/``aloeR``,
    ``rubberwhale1``/``rubberwhale2``, ``court1-a``/``court1-b``, ``left``/``right``,
    ``ela_original``/``ela_modified``, ``Elephants``/``Elephants_3840x2160``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = re.sub(r"[-_]?\d+x\d+$", "", stem)
    stem = re.sub(r"[-_](original|modified|[a-dA-D])$", "", stem)
    stem = re.sub(r"(?<=[a-z])[LRAB]$", "", stem)
    stem = re.sub(r"[-_]?\d+$", "", stem).lower()
    if stem in ("left", "right"):
        stem = "left|right"
    return os.path.dirname(path), stem


def _groups(hashes: Sequence[int], names: Sequence[tuple[str, str]], bits: int) -> list[int]:
    """Union-find over pairs with the same :func:`name_key` or within ``bits`` Hamming distance
    of their hashes: a group index per image."""
    parent = list(range(len(hashes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hashes)):
        for j in range(i):
            if names[i] == names[j] or bin(hashes[i] ^ hashes[j]).count("1") <= bits:
                parent[find(i)] = find(j)
    return [find(i) for i in range(len(hashes))]


def split_of(group_key: str, seed: int, fraction: float) -> bool:
    """True when the group is held out: a hash of ``(seed, group_key)`` below ``fraction``."""
    digest = hashlib.sha256(f"{seed}:{group_key}".encode()).hexdigest()
    return int(digest[:12], 16) / float(1 << 48) < fraction


def _slug(source: str) -> str:
    if source.startswith("folder:"):
        return "folder-" + os.path.basename(source.removeprefix("folder:").rstrip("/"))
    return source


def _store(rgb, raw: bytes, dest: str, limit: int | None) -> tuple[bytes, tuple[int, int]]:
    """Write the original bytes, or a downscaled JPEG when the image exceeds ``limit``."""
    from PIL import Image

    if limit is not None and max(rgb.size) > limit:
        scale = limit / max(rgb.size)
        size = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
        buf = io.BytesIO()
        rgb.resize(size, Image.LANCZOS).save(buf, "JPEG", quality=95)
        data = buf.getvalue()
    else:
        data, size = raw, rgb.size
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(data)
    return data, size


def gather(config: GatherConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Gather, filter, deduplicate, split and store the images; returns the manifest.

    Writes ``<workdir>/images/<source>/<file>``, ``manifest.json``, ``train.txt`` and
    ``held_out.txt`` (paths relative to ``workdir``, for ``images.from_list``).
    """
    from PIL import Image

    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    cache = config.cache_dir or os.path.join(workdir, "debs")
    candidates: list[Candidate] = []
    sources: dict[str, dict[str, Any]] = {}
    for package in config.packages:
        if not config.apt:
            sources[package] = {"status": "skipped (apt disabled)"}
            continue
        try:
            root, version = fetch_package(package, cache)
        except PackageUnavailableError as err:
            sources[package] = {"status": f"unavailable: {err}"}
            continue
        found = debian_candidates(DEBIAN_SOURCES[package], root, version)
        sources[package] = {"status": "ok", "version": version}
        candidates += found
    if config.samples:
        candidates += sample_candidates()
    for folder in config.folders:
        candidates += folder_candidates(folder)
    if not candidates:
        raise FileNotFoundError(
            "no candidate images: no package could be fetched and no folder or sample given"
        )

    kept, seen = [], {}
    for c in candidates:
        stats = sources.setdefault(c.source, {"status": "ok"})
        stats["found"] = stats.get("found", 0) + 1
        rejected = stats.setdefault("rejected", {})
        with open(c.path, "rb") as f:
            raw = f.read()
        try:
            with Image.open(io.BytesIO(raw)) as img:
                img.load()
                size = img.size
                rgb = img.convert("RGB")
        except (OSError, ValueError):
            rejected["unreadable"] = rejected.get("unreadable", 0) + 1
            continue
        reason = photo_check(rgb, config)
        pixels = hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
        if reason is None and pixels in seen:
            reason = f"duplicate of {seen[pixels]}"
        if reason is not None:
            key = "duplicate" if reason.startswith("duplicate") else reason
            rejected[key] = rejected.get(key, 0) + 1
            continue
        seen[pixels] = c.original_path
        kept.append((c, rgb, raw, size))

    groups = _groups(
        [dhash(rgb) for _, rgb, _, _ in kept],
        [name_key(c.original_path) for c, _, _, _ in kept],
        config.near_duplicate_bits,
    )
    shas = [hashlib.sha256(raw).hexdigest() for _, _, raw, _ in kept]
    group_key = {}
    for g, sha in zip(groups, shas, strict=True):
        group_key[g] = min(group_key.get(g, sha), sha)
    held = {g: split_of(k, config.seed, config.held_out_fraction) for g, k in group_key.items()}
    if len(held) >= 2 and len(set(held.values())) == 1:  # keep both splits non-empty
        order = sorted(held, key=lambda g: hashlib.sha256(
            f"{config.seed}:{group_key[g]}".encode()).hexdigest())  # fmt: skip
        flip = order[0] if not held[order[0]] else order[-1]
        held[flip] = not held[flip]

    images_dir = os.path.join(workdir, "images")
    if os.path.isdir(images_dir):
        shutil.rmtree(images_dir)  # a rerun rewrites the set exactly
    records, used_names = [], set()
    for (c, rgb, raw, size), g, sha in zip(kept, groups, shas, strict=True):
        name = c.original_path.lstrip("/").split("/")
        base = "_".join(name[-2:]) if c.source in DEBIAN_SOURCES else name[-1]
        stem, ext = os.path.splitext(os.path.join(images_dir, _slug(c.source), base))
        limit = config.max_stored_side
        ext = ".jpg" if limit is not None and max(rgb.size) > limit else ext
        while stem + ext in used_names:
            stem += "_"
        dest = stem + ext
        used_names.add(dest)
        data, stored_size = _store(rgb, raw, dest, limit)
        records.append({
            "file": os.path.relpath(dest, workdir),
            "split": "held_out" if held[g] else "train",
            "group": group_key[g][:16],
            "source": c.source,
            "package_version": c.package_version,
            "licence": c.licence,
            "licence_from": c.licence_from,
            "original_path": c.original_path,
            "width": size[0],
            "height": size[1],
            "bytes": len(raw),
            "sha256": sha,
            "stored_width": stored_size[0],
            "stored_height": stored_size[1],
            "stored_sha256": hashlib.sha256(data).hexdigest(),
        })  # fmt: skip
    records.sort(key=lambda r: r["file"])
    for r in records:
        sources[r["source"]]["kept"] = sources[r["source"]].get("kept", 0) + 1
    manifest = {
        "config": dataclasses.asdict(config),
        "sources": sources,
        "counts": {
            "images": len(records),
            "groups": len(group_key),
            "train": sum(r["split"] == "train" for r in records),
            "held_out": sum(r["split"] == "held_out" for r in records),
        },
        "images": records,
    }
    with open(os.path.join(workdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for split in ("train", "held_out"):
        with open(os.path.join(workdir, f"{split}.txt"), "w") as f:
            f.writelines(r["file"] + "\n" for r in records if r["split"] == split)
    return manifest
