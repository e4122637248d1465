"""Reading images of every mode as RGB, the scan for bad files, folder/CSV data and the preprocessing metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.data.folders import DataError, image_data
from torchgraft.data.images import BadImage, load_rgb, scan_images
from torchgraft.data.preprocess import Preprocessing, preprocessing_for

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """A real photo, 64x96 RGB uint8."""
    return np.asarray(Image.fromarray(skimage_data.chelsea()).resize((96, 64)))


def test_grayscale_palette_and_bilevel_become_rgb(tmp_path, cat):
    gray = Image.fromarray(cat).convert("L")
    gray.save(tmp_path / "gray.png")
    Image.fromarray(cat).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(tmp_path / "palette.png")
    gray.convert("1").save(tmp_path / "bilevel.png")
    rgb = np.asarray(load_rgb(tmp_path / "gray.png"))
    assert rgb.shape == (64, 96, 3) and (rgb[..., 0] == np.asarray(gray)).all() and (rgb[..., 0] == rgb[..., 2]).all()
    palette = np.asarray(load_rgb(tmp_path / "palette.png")).astype(int)
    assert palette.shape == (64, 96, 3) and np.abs(palette - cat).mean() < 8  # 64 colours: close to the photo
    assert set(np.unique(np.asarray(load_rgb(tmp_path / "bilevel.png")))) <= {0, 255}


def test_transparency_is_composited_on_white(tmp_path, cat):
    rgba = np.dstack([cat, np.full(cat.shape[:2], 255, np.uint8)])
    rgba[:, :48, 3] = 0  # left half fully transparent (its colour values are the cat's: must not show)
    rgba[:, 48:, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(load_rgb(tmp_path / "rgba.png"))
    assert (out[:, :48] == 255).all()
    assert (out[:, 48:] == cat[:, 48:]).all()
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0  # index 0 (black) is transparent
    palette.save(tmp_path / "palette_alpha.png", transparency=0)
    out = np.asarray(load_rgb(tmp_path / "palette_alpha.png"))
    assert tuple(out[0, 0]) == (200, 10, 10) and tuple(out[3, 3]) == (255, 255, 255)


def test_cmyk_jpeg_and_16_bit_png(tmp_path, cat):
    Image.fromarray(cat).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
    cmyk = np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int)
    assert cmyk.shape == (64, 96, 3) and np.abs(cmyk - cat).mean() < 6  # JPEG loss only, colours right
    deep = np.asarray(Image.fromarray(cat).convert("L")).astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode in ("I;16", "I")
    out = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert (out[..., 1] == (deep / 257).round()).all()  # full range kept: not clipped to white
    assert out.std() > 20


def test_exif_rotation_is_applied(tmp_path, cat):
    image = Image.fromarray(cat)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (64, 96)


def test_scan_lists_bad_files_with_their_paths(tmp_path, cat):
    good = tmp_path / "good.png"
    Image.fromarray(cat).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:300])
    (tmp_path / "text.jpg").write_text("not an image")
    bad = scan_images([good, truncated, tmp_path / "text.jpg", tmp_path / "missing.png"])
    assert [b.path for b in bad] == [str(truncated), str(tmp_path / "text.jpg"), str(tmp_path / "missing.png")]
    with pytest.raises(BadImage, match=r"truncated\.png"):
        load_rgb(truncated)


def _folder(root, layout: dict[str, int], image: np.ndarray) -> None:
    for name, count in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(np.roll(image, i, axis=1)).save(root / name / f"{i}.png")


def test_single_folder_split_is_stratified_and_seeded(tmp_path, cat):
    _folder(tmp_path, {"a": 10, "b": 5, "empty": 0}, cat)
    data = image_data(tmp_path, valid_pct=0.2, seed=1)
    assert data.classes == ["a", "b"]
    assert data.warnings == ["class folder 'empty' holds no image files: left out"]
    assert sorted(label for _, label in data.valid) == [0, 0, 1]
    assert len(data.train) == 12 and not set(data.train) & set(data.valid)
    assert image_data(tmp_path, valid_pct=0.2, seed=1).valid == data.valid
    assert image_data(tmp_path, valid_pct=0.2, seed=2).valid != data.valid


def test_train_valid_folders_and_reports(tmp_path, cat):
    _folder(tmp_path / "train", {"a": 3, "b": 3}, cat)
    _folder(tmp_path / "val", {"a": 2}, cat)
    data = image_data(tmp_path)
    assert (len(data.train), len(data.valid)) == (6, 2)
    assert data.warnings == [f"class 'b' has no images in {tmp_path / 'val'}"]
    _folder(tmp_path / "val", {"c": 1}, cat)
    with pytest.raises(DataError, match=r"\['c'\] have no training images"):
        image_data(tmp_path)


def test_bad_files_raise_or_are_skipped(tmp_path, cat):
    _folder(tmp_path, {"a": 4, "b": 4}, cat)
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=r"1 unreadable image files: .*broken.jpg.*skip_bad=True"):
        image_data(tmp_path)
    data = image_data(tmp_path, skip_bad=True)
    assert [b.path for b in data.skipped] == [str(tmp_path / "b" / "broken.jpg")]
    assert len(data.train) + len(data.valid) == 8
    assert "1 unreadable files skipped" in data.summary()


def test_csv_with_and_without_split_column(tmp_path, cat):
    _folder(tmp_path / "img", {"x": 4}, cat)
    rows = [f"img/x/{i}.png,{'dog' if i % 2 else 'cat'}" for i in range(4)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    data = image_data(tmp_path / "labels.csv", valid_pct=0.5)
    assert data.classes == ["cat", "dog"] and len(data.valid) == 2
    marked = [f"{row},{'valid' if i < 2 else 'train'}" for i, row in enumerate(rows)]
    (tmp_path / "split.csv").write_text("\n".join(marked) + "\n")
    data = image_data(tmp_path / "split.csv")
    assert [p for p, _ in data.valid] == [str(tmp_path / "img/x/0.png"), str(tmp_path / "img/x/1.png")]
    (tmp_path / "missing.csv").write_text("img/x/9.png,cat\n")
    with pytest.raises(DataError, match=r"1 bad rows: line 1: no file .*9.png"):  # by line (issue 14)
        image_data(tmp_path / "missing.csv")


def test_preprocessing_comes_from_the_weights_metadata():
    torchvision_prep = preprocessing_for("resnet50")
    assert (torchvision_prep.size, torchvision_prep.resize, torchvision_prep.interpolation) == (224, 232, "bilinear")
    assert preprocessing_for("vit_b_16").resize == 256  # each weights' own recipe, not one global default
    assert (preprocessing_for("efficientnet_b7").size, preprocessing_for("efficientnet_b7").interpolation) == (
        600,
        "bicubic",
    )
    assert (preprocessing_for("inception_v3").size, preprocessing_for("inception_v3").resize) == (299, 342)
    pytest.importorskip("timm")
    timm_prep = preprocessing_for("timm/vit_base_patch16_224")
    assert timm_prep.mean == (0.5, 0.5, 0.5) and timm_prep.interpolation == "bicubic" and timm_prep.resize == 249
    assert preprocessing_for("timm/efficientnet_lite0", size=64) == Preprocessing(
        64, 73, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic"
    )


def test_transforms_normalise_and_augment(cat):
    prep = Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = Image.fromarray(cat)
    out = prep.eval_transform()(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, prep.eval_transform()(image))
    assert out.min() >= -2 and out.max() <= 2 and out.mean().abs() < 1.5
    torch.manual_seed(0)
    draws = [prep.train_transform()(image) for _ in range(4)]
    assert all(d.shape == (3, 32, 32) for d in draws) and not torch.equal(draws[0], draws[1])
    assert torch.equal(prep.train_transform(augment="none")(image), out)
    assert Preprocessing.from_dict(prep.as_dict()) == prep
    with pytest.raises(ValueError, match="interpolation 'lanczos'"):
        Preprocessing(32, 36, (0.5,), (0.5,), "lanczos")
