"""Image sources for extraction: a folder tree, a list file, or the built-in offline sample set.

Every source is a list of image ids plus ``load(index) -> uint8 [size, size, 3]``. Loading is
deterministic: the same index always gives the same pixels (random views are seeded by
``(seed, base image, view)``), which is what makes an interrupted extraction resumable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif")
SKIMAGE_NAMES = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
    "coins", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
SKLEARN_NAMES = ("china.jpg", "flower.jpg")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D uint8, bool or float image -> uint8 ``[H, W, 3]``."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float64) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def resize_crop(image: np.ndarray, size: int, box=None, flip: bool = False, crop=0.875):
    """Crop ``box = (top, left, height, width)`` (default: centred square of the shorter side
    times ``crop``), optionally mirror it, and resize to ``[size, size, 3]`` (PIL bicubic)."""
    from PIL import Image

    h, w = image.shape[:2]
    if box is None:
        side = max(1, int(round(min(h, w) * crop)))
        box = ((h - side) // 2, (w - side) // 2, side, side)
    top, left, bh, bw = box
    patch = image[top : top + bh, left : left + bw]
    if flip:
        patch = patch[:, ::-1]
    out = Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.BICUBIC)
    return np.asarray(out, np.uint8)


def random_box(rng: np.random.Generator, h: int, w: int, scale=(0.25, 1.0), ratio=(0.75, 4 / 3)):
    """A random crop box (torchvision ``RandomResizedCrop`` style): area and aspect ratio."""
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        bw, bh = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < bw <= w and 0 < bh <= h:
            return int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


class ImageSource:
    """A deterministic list of images, each loaded as uint8 ``[size, size, 3]``."""

    def __init__(
        self, ids: Sequence[str], loader: Callable[[int], np.ndarray], size: int, **description
    ):
        self.ids = list(ids)
        self.description = {"size": size, "count": len(self.ids), **description}
        self._loader = loader
        self.size = size

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 ``[size, size, 3]``."""
        return self._loader(index)

    def load_many(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``[len(indices), size, size, 3]``."""
        return (
            np.stack([self.load(i) for i in indices])
            if len(indices)
            else np.zeros((0, self.size, self.size, 3), np.uint8)
        )


def _read_file(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


def from_paths(paths: Sequence[str], ids: Sequence[str], size: int, crop=0.875) -> ImageSource:
    """Centre-cropped (``crop`` of the shorter side) images from files."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed images do not exist, first: {missing[0]}")
    return ImageSource(
        ids, lambda i: resize_crop(_read_file(paths[i]), size, crop=crop), size, crop=crop
    )


def from_folder(root: str | os.PathLike, size: int, crop=0.875) -> ImageSource:
    """Every image under ``root`` (ImageNet layout ``root/<class>/<file>``), sorted by path."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    rel = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root)
        for f in files
        if f.lower().endswith(EXTENSIONS)
    )
    if not rel:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {root}")
    return from_paths([os.path.join(root, r) for r in rel], rel, size, crop)


def from_list(list_file: str | os.PathLike, size: int, crop=0.875) -> ImageSource:
    """Images named one per line in ``list_file`` (relative paths are relative to its folder)."""
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"image list not found: {list_file}")
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file) as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return from_paths([os.path.join(base, n) for n in names], names, size, crop)


def sample_images() -> list[tuple[str, np.ndarray]]:
    """The offline sample set: ``skimage.data`` images and sklearn's two sample photos."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = [(f"skimage:{n}", to_rgb(getattr(skimage.data, n)())) for n in SKIMAGE_NAMES]
    photos = load_sample_images()
    names = [os.path.basename(n) for n in photos.filenames]
    out += [(f"sklearn:{n}", to_rgb(a)) for n, a in zip(names, photos.images, strict=True)]
    return out


def view_of(image: np.ndarray, size: int, seed: int, image_index: int, view: int) -> np.ndarray:
    """View ``view`` of ``image`` as uint8 ``[size, size, 3]``: view 0 is the centre crop, the
    others random resized crops (area 25-100%, aspect 3:4-4:3) mirrored with probability 1/2,
    seeded by ``(seed, image_index, view)``."""
    if view == 0:
        return resize_crop(image, size)
    rng = np.random.default_rng([seed, image_index, view])
    box = random_box(rng, *image.shape[:2])
    return resize_crop(image, size, box=box, flip=bool(rng.integers(2)))


def from_samples(size: int, views: int = 8, seed: int = 0) -> ImageSource:
    """``views`` views of each sample image (:func:`view_of`). Ids look like
    ``skimage:astronaut#3``."""
    base = sample_images()
    ids = [f"{name}#{v}" for name, _ in base for v in range(views)]

    def load(index: int) -> np.ndarray:
        image_index, view = divmod(index, views)
        return view_of(base[image_index][1], size, seed, image_index, view)

    return ImageSource(ids, load, size, kind="sample", views=views, seed=seed)


def views_from_list(list_file: str | os.PathLike, size: int, views: int, seed: int = 0):
    """``views`` views (:func:`view_of`) of each image named in ``list_file`` (one path a line,
    relative to its folder). Ids look like ``images/scratch/x.jpg#3``; the same ``(list, size,
    views, seed)`` always gives the same pixels."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"image list not found: {list_file}")
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file) as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not names:
        raise ValueError(f"image list {list_file} names no images")
    paths = [os.path.join(base, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed images do not exist, first: {missing[0]}")
    ids = [f"{name}#{v}" for name in names for v in range(views)]

    def load(index: int) -> np.ndarray:
        image_index, view = divmod(index, views)
        return view_of(_read_file(paths[image_index]), size, seed, image_index, view)

    return ImageSource(ids, load, size, kind="views", list=list_file, views=views, seed=seed)
