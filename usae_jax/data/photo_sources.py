"""Where gathered images come from: packaged photographs and user folders, with licences.

* Debian packages, downloaded without installing them (``apt-get download NAME`` then
  ``dpkg-deb -x``): the table :data:`DEBIAN_SOURCES` says which files of each package are
  candidates. Each image's licence is read from the package's DEP-5 ``copyright`` file (the last
  ``Files:`` stanza whose pattern matches the installed path, or failing that its file name),
  else the table's fallback. Where ``apt-get``/``dpkg-deb`` are absent, or a download fails,
  :func:`fetch_package` raises :class:`PackageUnavailableError` and the gatherer skips the
  package.
* scikit-image's and scikit-learn's bundled photographs (:data:`SAMPLE_PHOTOS`).
* any folder of images the user points at (licence ``"as provided"``).

Each source yields :class:`Candidate` files; :mod:`usae_jax.data.gather` filters, groups, splits
and stores them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Sequence

from usae_jax.data.images import EXTENSIONS


@dataclasses.dataclass(frozen=True, kw_only=True)
class DebianSource:
    """Which files of one Debian package are candidate photographs."""

    package: str
    """Debian package name (``apt-get download`` argument)."""
    patterns: tuple[str, ...]
    """Globs relative to the extracted package root."""
    licence: str
    """Fallback licence when the package's copyright file names none for a file."""


DEBIAN_SOURCES = {
    s.package: s
    for s in (
        DebianSource(package="scratch", licence="CC-BY-SA-3.0",
                     patterns=("usr/share/scratch/Media/Backgrounds/*/*",)),
        DebianSource(package="opencv-doc", licence="BSD-3-Clause",
                     patterns=("usr/share/doc/opencv-doc/examples/data/*",)),
        DebianSource(package="mate-backgrounds", licence="GPL-2+",
                     patterns=("usr/share/backgrounds/mate/nature/*",)),
        DebianSource(package="lomiri-wallpapers-16.04", licence="CC-BY-SA-4.0",
                     patterns=("usr/share/backgrounds/*",)),
    )
}  # fmt: skip
SAMPLE_PHOTOS = (
    ("skimage", "astronaut.png", "public domain (NASA)"),
    ("skimage", "chelsea.png", "CC0-1.0 (Stefan van der Walt)"),
    ("skimage", "coffee.png", "CC0-1.0 (Rachel Michetti)"),
    ("skimage", "rocket.jpg", "public domain (SpaceX)"),
    ("skimage", "hubble_deep_field.jpg", "public domain (NASA)"),
    ("skimage", "retina.jpg", "CC0-1.0"),
    ("skimage", "ihc.png", "no known copyright restrictions"),
    ("sklearn", "china.jpg", "CC-BY-2.0 (danielbuechele)"),
    ("sklearn", "flower.jpg", "CC-BY-2.0 (vultilion)"),
)
"""(package, file in its data folder, licence as its documentation states)."""


@dataclasses.dataclass
class Candidate:
    """One image file before filtering."""

    source: str
    path: str
    original_path: str
    licence: str
    licence_from: str
    package_version: str | None = None


class PackageUnavailableError(RuntimeError):
    """A Debian package could not be fetched (no apt, no network, unknown name)."""


def _run(cmd: Sequence[str], cwd: str) -> str:
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise PackageUnavailableError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
    return done.stdout


def fetch_package(package: str, cache_dir: str) -> tuple[str, str]:
    """Download (once) and extract a Debian package; returns ``(root, version)``.

    Raises:
      PackageUnavailableError: ``apt-get``/``dpkg-deb`` missing or the download failed.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise PackageUnavailableError("apt-get/dpkg-deb not found (not a Debian-like system)")
    os.makedirs(cache_dir, exist_ok=True)
    debs = sorted(glob.glob(os.path.join(cache_dir, f"{package}_*.deb")))
    if not debs:
        _run(["apt-get", "download", package], cache_dir)
        debs = sorted(glob.glob(os.path.join(cache_dir, f"{package}_*.deb")))
        if not debs:
            raise PackageUnavailableError(f"apt-get download {package} wrote no .deb")
    version = _run(["dpkg-deb", "-f", debs[-1], "Version"], cache_dir).strip()
    root = os.path.join(cache_dir, f"{package}_extracted")
    if not os.path.isdir(root):
        _run(["dpkg-deb", "-x", debs[-1], root + ".partial"], cache_dir)
        os.replace(root + ".partial", root)
    return root, version


def parse_copyright(text: str) -> list[tuple[tuple[str, ...], str]]:
    """DEP-5 ``Files:`` stanzas as ``[(patterns, licence)]`` in file order."""
    stanzas, files, licence = [], None, None
    for block in text.split("\n\n"):
        files = licence = None
        for line in block.splitlines():
            if line.startswith("Files:"):
                files = tuple(line.removeprefix("Files:").split())
            elif line.startswith("License:"):
                licence = line.removeprefix("License:").strip()
        if files and licence:
            stanzas.append((files, licence))
    return stanzas


def licence_for(rel_path: str, stanzas, fallback: str) -> tuple[str, str]:
    """``(licence, which pattern matched)`` of an installed file. Patterns are upstream paths,
    so a pattern matches the installed path's tail, or (when its file name has no wildcard) the
    file name alone; the last matching stanza wins, as DEP-5 says."""
    found = (fallback, "fallback")
    name = os.path.basename(rel_path)
    for patterns, licence in stanzas:
        for p in patterns:
            tail = fnmatch.fnmatch(rel_path, p) or fnmatch.fnmatch(rel_path, "*/" + p)
            base = os.path.basename(p)
            if tail or (not any(c in base for c in "*?[") and base == name):
                found = (licence, p)
    return found


def debian_candidates(source: DebianSource, root: str, version: str) -> list[Candidate]:
    """Candidate image files of an extracted package, with their licences."""
    doc = os.path.join(root, "usr", "share", "doc", source.package, "copyright")
    stanzas = []
    if os.path.isfile(doc):
        with open(doc, errors="replace") as f:
            stanzas = parse_copyright(f.read())
    out = []
    for pattern in source.patterns:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            rel = os.path.relpath(path, root)
            if not os.path.isfile(path) or not path.lower().endswith(EXTENSIONS):
                continue
            licence, match = licence_for(rel, stanzas, source.licence)
            origin = "copyright file" if match != "fallback" else "fallback"
            out.append(Candidate(source.package, path, "/" + rel, licence,
                                 f"{origin} ({match})", version))  # fmt: skip
    return out


def sample_candidates() -> list[Candidate]:
    """scikit-image's and scikit-learn's bundled photographs (absent packages are skipped)."""
    folders = {"skimage": ("skimage", "data"), "sklearn": ("sklearn", "datasets", "images")}
    out = []
    for package, name, licence in SAMPLE_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = os.path.join(spec.submodule_search_locations[0], *folders[package][1:], name)
        if os.path.isfile(path):
            out.append(Candidate(package, path, path, licence, "package documentation"))
    return out


def folder_candidates(folder: str) -> list[Candidate]:
    """Every image file under ``folder`` (sorted)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(
        os.path.join(d, f)
        for d, _, files in os.walk(folder)
        for f in files
        if f.lower().endswith(EXTENSIONS)
    )
    source = "folder:" + os.path.abspath(folder)
    return [Candidate(source, p, os.path.abspath(p), "as provided", "user folder") for p in paths]
