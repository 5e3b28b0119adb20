"""Gather a reproducible image set (packaged photographs + your folders) with a manifest.

Example (Debian packages via apt-get download, plus skimage/sklearn photographs):

  python experiments/gather_images.py --workdir /tmp/images

Offline / without apt (any folder of images; searched recursively):

  python experiments/gather_images.py --workdir /tmp/images --noapt --folder ~/photos

Writes images/<source>/..., manifest.json (source package, licence, original path, size, sha256
per image), train.txt and held_out.txt (split by image group, seeded) for extraction:
``experiments/extract.py --images /tmp/images/train.txt``.
"""

from absl import app, flags

from usae_jax.data.gather import GatherConfig, gather
from usae_jax.data.photo_sources import DEBIAN_SOURCES

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (images, manifest, split lists).")
_PACKAGES = flags.DEFINE_list(
    "packages", list(GatherConfig.packages), f"Debian packages; known: {sorted(DEBIAN_SOURCES)}."
)
_FOLDERS = flags.DEFINE_multi_string("folder", [], "Extra image folder (repeatable).")
_SAMPLES = flags.DEFINE_bool("samples", True, "Include skimage/sklearn bundled photographs.")
_APT = flags.DEFINE_bool("apt", True, "Download the packages with apt-get (no: skip them).")
_CACHE = flags.DEFINE_string("cache_dir", None, "Where .deb files go (default WORKDIR/debs).")
_HELD_OUT = flags.DEFINE_float("held_out_fraction", 0.2, "Expected held-out fraction of groups.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the held-out split.")
_MAX_SIDE = flags.DEFINE_integer("max_stored_side", 1024, "Downscale larger images (0: never).")


def main(argv):
    del argv
    config = GatherConfig(
        packages=tuple(p for p in _PACKAGES.value if p),
        folders=tuple(_FOLDERS.value),
        samples=_SAMPLES.value,
        apt=_APT.value,
        cache_dir=_CACHE.value,
        held_out_fraction=_HELD_OUT.value,
        seed=_SEED.value,
        max_stored_side=_MAX_SIDE.value or None,
    )
    manifest = gather(config, _WORKDIR.value)
    for source, info in manifest["sources"].items():
        print(f"{source}: {info.get('kept', 0)} kept of {info.get('found', 0)} "
              f"({info['status']}); rejected {info.get('rejected', {})}")  # fmt: skip
    counts = manifest["counts"]
    print(f"{counts['images']} images in {counts['groups']} groups: {counts['train']} train, "
          f"{counts['held_out']} held out -> {_WORKDIR.value}/manifest.json")  # fmt: skip


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
