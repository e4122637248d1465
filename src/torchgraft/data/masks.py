"""Image + mask pairs for segmentation: read, checked before training, transformed jointly.

Layouts: ``DATA/images/x.jpg`` with ``DATA/masks/x.png`` (same stem; split by ``valid_pct``), or
``DATA/train/{images,masks}`` + ``DATA/valid/{images,masks}``. A mask is an index PNG (mode ``L`` or a palette
PNG whose indices are the classes, as Pascal VOC's) or an RGB PNG whose colours ``classes.txt`` lists.
``DATA/classes.txt`` names the classes, one per line (``name`` or ``name R G B``); without it classes are
numbered from the largest label found. The value ``ignore_index`` (255) marks pixels that count nowhere.

Every pair is checked before anything trains and bad ones are listed by path — an image without a mask, a
mask without an image, an image and mask of different sizes, labels beyond the classes, RGB colours not in
``classes.txt``, files that do not decode; ``skip_bad=True`` leaves them out and counts them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from torchgraft.data.images import IMAGE_SUFFIXES, BadImage, load_rgb
from torchgraft.data.resize import ExactResize
from torchgraft.data.samples import DataError
from torchgraft.tasks.segment import IGNORE_INDEX

__all__ = [
    "MaskData",
    "MaskDataset",
    "class_colours",
    "mask_transforms",
    "overlay",
    "read_mask",
    "segmentation_data",
    "write_mask",
]

Pair = tuple[str, str]  # image path, mask path


@dataclass
class MaskData:
    """Checked image + mask pairs.

    Attributes:
        classes: class names, in label order.
        train: ``(image path, mask path)`` pairs to train on.
        valid: pairs to validate on.
        colours: RGB colour of each class when masks are RGB (from ``classes.txt``), else ``None``.
        bad_rows: files left out for want of a partner (an image without a mask, or a mask without an image).
        skipped: one line per bad pair left out by ``skip_bad`` (path: reason).
        task: ``"segment"``; ``task_reason`` and ``warnings`` stay empty (the layout says the task).
        split_off: the share split off at random for validation (``None``: train/ and valid/ folders).
    """

    classes: list[str]
    train: list[Pair]
    valid: list[Pair]
    colours: list[tuple[int, int, int]] | None = None
    bad_rows: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    task: str = "segment"
    task_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    split_off: float | None = None

    @property
    def n_outputs(self) -> int:
        """Classes per pixel."""
        return len(self.classes)

    def summary(self) -> str:
        """One line: classes, train/valid pairs, what was skipped."""
        dropped = len(self.bad_rows) + len(self.skipped)  # files without a partner, and pairs that failed
        alone = f" ({len(self.bad_rows)} without a partner)" if self.bad_rows else ""
        skipped = f", {dropped} bad pairs skipped{alone}" if dropped else ""
        return f"segment: {len(self.classes)} classes, {len(self.train)} train / {len(self.valid)} valid pairs{skipped}"


def _read_classes(root: Path) -> tuple[list[str] | None, list[tuple[int, int, int]] | None]:
    path = root / "classes.txt"
    if not path.is_file():
        return None, None
    names, colours = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (1, 4) or (len(parts) == 4 and not all(p.isdigit() for p in parts[1:])):
            raise DataError(f"{path}:{number}: expected 'name' or 'name R G B', got {line!r}.")
        names.append(parts[0])
        if len(parts) == 4:
            colours.append((int(parts[1]), int(parts[2]), int(parts[3])))
    if colours and len(colours) != len(names):
        raise DataError(f"{path}: give an R G B colour on every line or on none.")
    return names, colours or None


def read_mask(path: str | Path, colours: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """The ``(H, W)`` label array of a mask file: index values of an ``L``/``P`` PNG, or RGB colours mapped
    through ``colours`` (pixels of another colour become -1).

    Raises:
        BadImage: the file does not decode.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("L", "P", "I", "I;16"):
                return np.asarray(image).astype(np.int64)
            rgb = np.asarray(image.convert("RGB")).astype(np.int64)
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImage(path, f"{type(error).__name__}: {error}") from None
    if colours is None:
        return np.full(rgb.shape[:2], -2, dtype=np.int64)  # an RGB mask without colours: reported by the check
    codes = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    labels = np.full(codes.shape, -1, dtype=np.int64)
    for index, (r, g, b) in enumerate(colours):
        labels[codes == r * 65536 + g * 256 + b] = index
    return labels


def _pairs(folder: Path) -> tuple[list[Pair], list[str]]:
    images = {p.stem: p for p in sorted((folder / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted((folder / "masks").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    bad = [f"{images[s]}: no mask {folder / 'masks' / s}.png" for s in images if s not in masks]
    bad += [f"{masks[s]}: a mask without an image in {folder / 'images'}" for s in masks if s not in images]
    return [(str(images[s]), str(masks[s])) for s in images if s in masks], bad


def _check(pair: Pair, n_classes: int | None, colours: Sequence[tuple[int, int, int]] | None) -> tuple[str | None, int]:
    """A reason the pair is bad (or ``None``) and the largest label in its mask."""
    image_path, mask_path = pair
    try:
        image = load_rgb(image_path)
        labels = read_mask(mask_path, colours)
    except BadImage as error:
        return str(error), -1
    if labels.shape != (image.height, image.width):
        return f"{mask_path}: mask {labels.shape[1]}x{labels.shape[0]} but image {image.width}x{image.height}", -1
    if (labels == -2).any():
        return f"{mask_path}: an RGB mask; list the class colours in classes.txt ('name R G B' lines)", -1
    if (labels == -1).any():
        colour = np.asarray(Image.open(mask_path).convert("RGB"))[labels == -1][0]
        return f"{mask_path}: colour {tuple(int(c) for c in colour)} is not in classes.txt", -1
    counted = labels[labels != IGNORE_INDEX]
    top = int(counted.max()) if counted.size else -1
    if n_classes is not None and top >= n_classes:
        return (
            f"{mask_path}: label {top} but classes.txt names {n_classes} classes (0..{n_classes - 1}, 255 ignored)",
            -1,
        )
    return None, top


def segmentation_data(root: str | Path, *, valid_pct: float = 0.2, seed: int = 0, skip_bad: bool = False) -> MaskData:
    """Read and check the image + mask pairs under ``root`` (see the module docstring for the layouts).

    Raises:
        DataError: no pairs, a bad ``classes.txt``, or bad pairs without ``skip_bad`` (every one listed).

    Example:
        >>> data = segmentation_data("scenes/")
        >>> data.summary()
        'segment: 11 classes, 240 train / 60 valid pairs'
    """
    root = Path(root)
    names, colours = _read_classes(root)
    split_off = None
    if (root / "train" / "images").is_dir():
        train, bad = _pairs(root / "train")
        valid, more = _pairs(root / "valid") if (root / "valid" / "images").is_dir() else ([], [])
        bad += more
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        pairs, bad = _pairs(root)
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        cut = round(len(pairs) * valid_pct)
        valid, train = [pairs[i] for i in sorted(order[:cut])], [pairs[i] for i in sorted(order[cut:])]
        split_off = valid_pct
    else:
        raise DataError(f"{root}: expected images/ and masks/ (or train/ and valid/ holding them).")
    checked = {pair: _check(pair, len(names) if names else None, colours) for pair in train + valid}
    skipped = [reason for reason, _ in checked.values() if reason]
    good = {pair for pair, (reason, _) in checked.items() if reason is None}
    if (bad or skipped) and not skip_bad:
        every = bad + skipped
        shown = "\n  ".join(every[:20]) + (f"\n  ... and {len(every) - 20} more" if len(every) > 20 else "")
        raise DataError(f"{root}: {len(every)} bad image/mask pairs (fix them, or --skip-bad):\n  {shown}")
    train, valid = [p for p in train if p in good], [p for p in valid if p in good]
    if not train or not valid:
        raise DataError(f"{root}: {len(train)} training and {len(valid)} validation pairs; need both.")
    classes = names or [str(i) for i in range(max(top for _, top in checked.values()) + 1)]
    return MaskData(classes, train, valid, colours, bad, skipped, split_off=split_off)


def mask_transforms(
    size: int, mean: Sequence[float], std: Sequence[float], *, train: bool, interpolation: str = "bilinear"
) -> v2.Compose:
    """Joint transforms of an image and its ``tv_tensors.Mask`` (masks are resized with nearest): training
    takes a random resized crop and a horizontal flip, evaluation resizes to ``size`` x ``size`` — the image
    as prediction and an exported graph do (:class:`~torchgraft.data.resize.ExactResize`, ``interpolation``)."""
    crop = (
        [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        if train
        else [_ResizePair(size, interpolation)]
    )
    return v2.Compose(
        [
            *crop,
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class _ResizePair:
    """Evaluation's resize of an (image, mask) pair: the image by :class:`ExactResize` (float in [0, 1], what
    ``predict_masks`` sees), the mask by nearest neighbour, both to ``size`` x ``size``."""

    def __init__(self, size: int, interpolation: str) -> None:
        self.size, self.resize = size, ExactResize((size, size), interpolation)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = v2.functional.resize(mask, [self.size, self.size], interpolation=v2.InterpolationMode.NEAREST)
        return tv_tensors.Image(self.resize(image)), labels

    def __repr__(self) -> str:
        return f"ResizePair({self.resize!r}, mask=nearest)"


class MaskDataset(Dataset):
    """``(image tensor (3, S, S), mask tensor (S, S) long)`` pairs, transformed jointly.

    ``plain`` is the deterministic version of a random ``transform`` (for a training set:
    ``mask_transforms(..., train=False)``): :meth:`unaugmented` gives the dataset with it, which the feature
    cache reads while the backbone is frozen (features of randomly augmented images cannot be stored).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        transform: v2.Compose,
        colours: Sequence[tuple[int, int, int]] | None = None,
        *,
        plain: v2.Compose | None = None,
    ) -> None:
        self.pairs, self.transform, self.colours, self.plain = list(pairs), transform, colours, plain

    def unaugmented(self) -> MaskDataset:
        """The same pairs through the ``plain`` transform (``self`` when none was given)."""
        return self if self.plain is None else MaskDataset(self.pairs, self.plain, self.colours)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(load_rgb(image_path)))
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(mask_path, self.colours)))
        image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


def class_colours(n: int, colours: Sequence[tuple[int, int, int]] | None = None) -> list[tuple[int, int, int]]:
    """``n`` RGB colours, one per class: ``colours`` (from ``classes.txt``) when given, else Pascal VOC's
    palette (class 0 black, then well-separated colours)."""
    if colours is not None:
        return [tuple(int(c) for c in colour) for colour in colours[:n]]  # type: ignore[misc]
    palette = []
    for index in range(n):
        rgb, value = [0, 0, 0], index
        for shift in range(7, -1, -1):  # VOC's bit-interleaved palette
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette.append((rgb[0], rgb[1], rgb[2]))
    return palette


def write_mask(path: str | Path, labels: np.ndarray, colours: Sequence[tuple[int, int, int]]) -> Path:
    """Save ``(H, W)`` class indices as an index PNG (mode ``P``: pixel values are the classes, shown in
    ``colours``; 255, ignored, shows white), which :func:`read_mask` and :func:`segmentation_data` read back."""
    if labels.ndim != 2 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"write_mask: labels must be (H, W) in 0..255, got shape {labels.shape}.")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [value for colour in colours for value in colour]
    flat += [0] * (768 - len(flat))
    flat[765:768] = [255, 255, 255]
    image.putpalette(flat)
    path = Path(path)
    image.save(path)
    return path


def overlay(
    image: Image.Image, labels: np.ndarray, colours: Sequence[tuple[int, int, int]], *, alpha: float = 0.5
) -> Image.Image:
    """``image`` with every pixel's class colour blended in (``alpha``: the colour's weight); pixels of a class
    coloured black (class 0 in the default palette: background) and ignored pixels are left as they are.
    ``labels`` is resized to the image (nearest) if needed."""
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    if labels.shape != rgb.shape[:2]:
        resized = Image.fromarray(labels.astype(np.uint8)).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST)
        labels = np.asarray(resized).astype(np.int64)
    table = np.zeros((256, 3), dtype=np.float32)
    table[: len(colours)] = np.asarray(colours, dtype=np.float32)
    painted = (labels < len(colours)) & (table[labels.clip(0, 255)].sum(-1) > 0)
    blended = rgb.copy()
    blended[painted] = (1 - alpha) * rgb[painted] + alpha * table[labels[painted]]
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
