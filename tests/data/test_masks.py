"""Image + mask pairs: real photos with index, palette and RGB masks, both layouts, classes.txt, every bad pair
listed by path (or skipped and counted), and joint transforms that keep masks integer and aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.data.masks import MaskDataset, mask_transforms, read_mask, segmentation_data
from torchgraft.data.samples import DataError

skimage_data = pytest.importorskip("skimage.data")
filters = pytest.importorskip("skimage.filters")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _coin_pairs(count: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """Crops of scikit-image's coins photo (as RGB) with their coin masks (Otsu), a border of 255 (ignored)."""
    photo = skimage_data.coins()
    mask = (photo > filters.threshold_otsu(photo)).astype(np.uint8)
    pairs = []
    for i in range(count):
        top, left = 10 * i, 15 * i
        crop, labels = photo[top : top + 60, left : left + 80], mask[top : top + 60, left : left + 80].copy()
        labels[0, :] = 255
        pairs.append((np.repeat(crop[..., None], 3, axis=2), labels))
    return pairs


def _write(root: Path, pairs, *, palette: bool = False) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (image, labels) in enumerate(pairs):
        Image.fromarray(image).save(root / "images" / f"{i:02d}.jpg")
        mask = Image.fromarray(labels)
        if palette:  # Pascal VOC style: indices with a colour palette
            mask = mask.convert("P")
            mask.putpalette([0, 0, 0, 200, 0, 0] + [0] * (3 * 254))
        mask.save(root / "masks" / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("palette", [False, True], ids=["index", "palette"])
def test_pairs_are_read_split_and_numbered(palette, tmp_path):
    data = segmentation_data(_write(tmp_path, _coin_pairs(), palette=palette), valid_pct=0.3)
    assert data.classes == ["0", "1"] and len(data.train) == 7 and len(data.valid) == 3
    assert data.summary() == "segment: 2 classes, 7 train / 3 valid pairs"
    assert data.split_off == 0.3  # announced by the run (app.prepare.split_line)
    labels = read_mask(data.train[0][1])
    assert set(np.unique(labels)) <= {0, 1, 255} and labels.shape == (60, 80)


def test_train_valid_folders_classes_txt_and_rgb_masks(tmp_path):
    colours = [(0, 0, 0), (255, 200, 0)]
    for split, pairs in (("train", _coin_pairs()[:6]), ("valid", _coin_pairs()[6:])):
        folder = tmp_path / split
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        for i, (image, labels) in enumerate(pairs):
            Image.fromarray(image).save(folder / "images" / f"{i}.png")
            rgb = np.zeros((*labels.shape, 3), np.uint8)
            rgb[labels == 1] = colours[1]
            Image.fromarray(rgb).save(folder / "masks" / f"{i}.png")
    (tmp_path / "classes.txt").write_text("background 0 0 0\ncoin 255 200 0\n")
    data = segmentation_data(tmp_path)
    assert data.classes == ["background", "coin"] and data.colours == colours
    assert (len(data.train), len(data.valid)) == (6, 4)
    expected = _coin_pairs()[0][1]
    assert np.array_equal(read_mask(data.train[0][1], data.colours), np.where(expected == 1, 1, 0))


def test_every_bad_pair_is_listed_by_path_or_skipped(tmp_path):
    root = _write(tmp_path, _coin_pairs())
    (root / "masks" / "00.png").unlink()  # an image without a mask
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "orphan.png")  # a mask without an image
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(root / "masks" / "01.png")  # another size
    Image.fromarray(np.full((60, 80), 3, np.uint8)).save(root / "masks" / "02.png")  # label 3 of 2 classes
    Image.fromarray(np.zeros((60, 80, 3), np.uint8) + 9).save(root / "masks" / "03.png")  # RGB without colours
    (root / "images" / "04.jpg").write_bytes(b"not a jpeg")
    (root / "classes.txt").write_text("background\ncoin\n")
    with pytest.raises(DataError) as caught:
        segmentation_data(root)
    message = str(caught.value)
    assert "6 bad image/mask pairs" in message
    for expected in (
        "00.jpg: no mask",
        "orphan.png: a mask without an image",
        "01.png: mask 30x30 but image 80x60",
        "02.png: label 3 but classes.txt names 2 classes",
        "03.png: an RGB mask; list the class colours in classes.txt",
        "04.jpg",
    ):
        assert expected in message, expected
    data = segmentation_data(root, skip_bad=True, valid_pct=0.2)
    assert (
        len(data.skipped) == 4
        and len(data.train) + len(data.valid) == 5
        and len(data.bad_rows) + len(data.skipped) == 6
    )
    assert data.summary().endswith(", 6 bad pairs skipped (2 without a partner)")  # every one dropped counted


def test_joint_transforms_keep_masks_integer_and_aligned(tmp_path):
    data = segmentation_data(_write(tmp_path, _coin_pairs()), valid_pct=0.3)
    valid = MaskDataset(data.valid, mask_transforms(48, MEAN, STD, train=False))
    image, mask = valid[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and mask.shape == (48, 48)
    assert mask.dtype == torch.long and set(mask.unique().tolist()) <= {0, 1, 255}  # nearest: no blended labels
    # images that are their masks (coins white): after the joint random crop and flip they must still agree
    rendered = [
        (np.repeat((labels == 1)[..., None] * 255, 3, axis=2).astype(np.uint8), labels) for _, labels in _coin_pairs()
    ]
    data = segmentation_data(_write(tmp_path / "rendered", rendered), valid_pct=0.3)
    torch.manual_seed(0)
    train = MaskDataset(data.train, mask_transforms(48, MEAN, STD, train=True))
    gaps = []
    for index in range(len(train)):
        image, mask = train[index]
        white, coin = image.mean(0) > 0.5, mask == 1
        counted = mask != 255
        agreement = (white == coin)[counted].float().mean()
        mirrored = (white.flip(-1) == coin)[counted].float().mean()  # what a flip of the image alone would give
        assert agreement > 0.9, (index, agreement)
        gaps.append(float(agreement - mirrored))
    assert sum(gaps) / len(gaps) > 0.1  # the alignment is not chance: mirroring the image alone breaks it
