"""The tensor decode path: the pixels of load_rgb for every kind of file, uint8 pipelines equal to the float
ones of before, crops normalised after the transfer, and the loaders' worker count from the cores."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from torchgraft.app.images import ImageInput
from torchgraft.app.inputs import Built, dataset_loaders, default_workers
from torchgraft.app.run import validation_outputs
from torchgraft.app.settings import TrainSettings
from torchgraft.data.decode import _tensor_decode, decode_rgb
from torchgraft.data.folders import ImageDataset, image_data
from torchgraft.data.images import BadImage, load_rgb
from torchgraft.data.preprocess import PixelBatch, PixelCollate, Preprocessing
from torchgraft.tasks.batch import move

skimage_data = pytest.importorskip("skimage.data")

JPEG_TOLERANCE = 1  # libjpeg-turbo in Pillow and in torchvision: identical here, one level allowed between builds


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """A real photo, 64x96 RGB uint8."""
    return np.asarray(Image.fromarray(skimage_data.chelsea()).resize((96, 64)))


def _rotated(image: Image.Image, orientation: int) -> dict[str, object]:
    exif = image.getexif()
    exif[0x0112] = orientation
    return {"exif": exif}


@pytest.fixture(scope="module")
def files(tmp_path_factory, cat):
    """``{name: (path, decoded by torchvision)}``: the files the data tests make for load_rgb, and more."""
    folder, image = tmp_path_factory.mktemp("kinds"), Image.fromarray(cat)
    gray = image.convert("L")
    rgba = np.dstack([cat, np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))])
    palette_alpha = Image.new("P", (4, 4), 0)
    palette_alpha.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette_alpha.putpixel((0, 0), 1)
    made = {
        "rgb.png": (image, {}, True),
        "gray.png": (gray, {}, True),
        "bilevel.png": (gray.convert("1"), {}, True),
        "palette.png": (image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), {}, True),
        "gray_transparent.png": (gray, {"transparency": 0}, True),
        "rgba.png": (Image.fromarray(rgba, mode="RGBA"), {}, False),
        "palette_alpha.png": (palette_alpha, {"transparency": 0}, False),
        "deep.png": (Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), {}, False),
        "photo.jpg": (image, {"quality": 90}, True),
        "gray.jpg": (gray, {"quality": 90}, True),
        "progressive.jpg": (image, {"quality": 90, "progressive": True}, True),
        "cmyk.jpg": (image.convert("CMYK"), {"quality": 95}, False),
        "photo.webp": (image, {}, False),
        "photo.gif": (image, {}, False),
        "photo.bmp": (image, {}, False),
        "photo.tiff": (image, {}, False),
        "photo.ppm": (image, {}, False),
    }
    for orientation in range(2, 9):
        made[f"rotated{orientation}.jpg"] = (image, {"quality": 90, **_rotated(image, orientation)}, True)
        made[f"rotated{orientation}.png"] = (image, _rotated(image, orientation), True)
    for name, (picture, options, _) in made.items():
        picture.save(folder / name, **options)
    return {name: (folder / name, tensor_path) for name, (_, _, tensor_path) in made.items()}


def _pil_pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(load_rgb(path)).copy()).permute(2, 0, 1)


def test_tensor_decode_gives_the_pixels_of_load_rgb_for_every_kind_of_file(files):
    for name, (path, tensor_path) in files.items():
        decoded, expected = decode_rgb(path), _pil_pixels(path)
        assert decoded.dtype == torch.uint8 and decoded.shape == expected.shape, name
        assert (_tensor_decode(path.read_bytes()) is not None) == tensor_path, name  # which decoder read it
        tolerance = JPEG_TOLERANCE if name.endswith(".jpg") and tensor_path else 0
        assert (decoded.int() - expected.int()).abs().max() <= tolerance, name
        assert decoded.permute(1, 2, 0).is_contiguous(), name  # one layout: the fast one for uint8 resizes


def test_the_cases_torchvision_reads_differently_are_right(files, cat):
    rotated = decode_rgb(files["rotated6.jpg"][0])
    assert rotated.shape == (3, 96, 64)  # EXIF orientation applied
    rgba = decode_rgb(files["rgba.png"][0])
    assert (rgba[:, :, 0] == 255).all()  # fully transparent column: white, not the cat under it
    assert tuple(decode_rgb(files["palette_alpha.png"][0])[:, 3, 3]) == (255, 255, 255)
    cmyk = decode_rgb(files["cmyk.jpg"][0]).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(cmyk - cat).mean() < 6  # converted as Pillow does, not read as four channels
    assert decode_rgb(files["deep.png"][0]).float().std() > 20  # 16-bit scaled, not clipped to white


def test_unreadable_files_raise_bad_image_naming_them(tmp_path, files):
    good = files["photo.jpg"][0].read_bytes()
    broken = {"truncated.jpg": good[: len(good) // 2], "truncated.png": files["rgb.png"][0].read_bytes()[:300]}
    broken["text.jpg"] = b"not an image"
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
    for name in [*broken, "missing.png"]:
        with pytest.raises(BadImage, match=name.replace(".", r"\.")):
            decode_rgb(tmp_path / name)


def _before(prep: Preprocessing, crop: list) -> v2.Compose:
    """The pipeline as it was: PIL image in, float steps of torchvision's own transforms last."""
    steps = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(prep.mean), list(prep.std))]
    return v2.Compose([v2.ToImage(), *crop, *steps])


def test_pipelines_equal_torchvision_steps(files):
    """Training crops and flips uint8 (torchvision's kernel, bit-equal to the PIL pipeline of before);
    validation resizes in float (torchvision's float antialiased resize, to float rounding), from a PIL
    image or a decoded tensor alike."""
    prep = Preprocessing(32, 36, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mode = v2.InterpolationMode.BILINEAR
    float_eval = v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize(36, interpolation=mode, antialias=True),
            v2.CenterCrop(32),
            v2.Normalize(list(prep.mean), list(prep.std)),
        ]
    )
    random_crop = v2.RandomResizedCrop(32, scale=(0.35, 1.0), interpolation=mode, antialias=True)
    before_train = _before(prep, [random_crop, v2.RandomHorizontalFlip()])
    worst = 0.0
    for name in ("rgb.png", "gray.png", "photo.jpg", "rotated6.jpg", "cmyk.jpg"):
        path = files[name][0]
        pil, pixels = load_rgb(path), decode_rgb(path)
        evaluated = prep.eval_transform()(pil)
        assert evaluated.shape == (3, 32, 32) and evaluated.dtype == torch.float32
        assert torch.allclose(evaluated, float_eval(pil), atol=1e-5)  # same kernel; float rounding apart
        crops = [prep.eval_transform(normalize=False)(pixels) for _ in range(2)]
        assert crops[0].dtype == torch.float32 and crops[0].min() >= 0 and crops[0].max() <= 1
        worst = max(worst, float((prep.normalize(torch.stack(crops))[0] - evaluated).abs().max()))
        torch.manual_seed(3)
        augmented = prep.train_transform()(pixels)
        torch.manual_seed(3)
        worst = max(worst, float((augmented - before_train(pil)).abs().max()))
    assert worst <= JPEG_TOLERANCE / 255 / min(prep.std)  # measured: 0 (the decoders agree to the pixel)


def test_pixel_batches_are_normalised_when_moved(files):
    prep = Preprocessing(32, 36, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    names = ["rgb.png", "photo.jpg", "gray.jpg"]
    images = [decode_rgb(files[n][0]) for n in names]
    crops = []
    for i, image in enumerate(images):
        torch.manual_seed(i)
        crops.append((prep.train_transform(normalize=False)(image), i))
    batch, targets = PixelCollate(prep)(crops)
    assert isinstance(batch, PixelBatch) and len(batch) == 3 and batch.pixels.dtype == torch.uint8
    inputs = move(batch, torch.device("cpu"), channels_last=True)
    expected = []
    for i, image in enumerate(images):
        torch.manual_seed(i)
        expected.append(prep.train_transform()(image))
    assert (
        inputs.dtype == torch.float32 and torch.equal(inputs, torch.stack(expected)) and targets.tolist() == [0, 1, 2]
    )
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    floats = torch.stack([prep.eval_transform(normalize=False)(image) for image in images])  # float in [0, 1]
    evaluated = torch.stack([prep.eval_transform()(image) for image in images])
    assert torch.allclose(prep.normalize(floats), evaluated, atol=1e-6) and floats.max() <= 1  # not scaled again


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_run_loaders_validate_on_what_prediction_sees(tmp_path, cat, device):
    """The loaders carry uint8 crops (a quarter of the bytes of float crops), normalised when moved: on the
    CPU as on CUDA (the batches of a CUDA run, here moved to the CPU without a GPU). Prediction's floats."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(4):
            Image.fromarray(np.roll(cat, 7 * i, axis=1)).save(tmp_path / label / f"{i}.jpg", quality=90)
    data = image_data(tmp_path, valid_pct=0.5)
    prep = Preprocessing(32, 36, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    settings = TrainSettings(batch_size=3, workers=2)
    train, valid = ImageInput().loaders(data, Built(model, "", "", prep), settings, torch.device(device))
    first = next(iter(train))[0]
    assert isinstance(first, PixelBatch) and first.pixels.dtype == torch.uint8
    outputs, _ = validation_outputs(model, valid, device="cpu")
    with torch.no_grad():  # what predict_images feeds the exported model
        predicted = model(torch.stack([prep.eval_transform()(decode_rgb(p)) for p, _ in data.valid]))
    assert torch.equal(outputs, predicted)


def test_workers_follow_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, workers in ((1, 1), (2, 2), (3, 2), (16, 15), (64, 63)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert default_workers() == workers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc_per_node 4 on the 64 cores
    assert default_workers() == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert default_workers() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert default_workers() == 11


def test_loaders_pin_and_prefetch_on_cuda_and_take_the_workers_setting():
    dataset = ImageDataset([("x.jpg", 0)] * 4, ["a"])
    train, valid = dataset_loaders(dataset, dataset, TrainSettings(batch_size=2, workers=2), torch.device("cuda"))
    assert (train.num_workers, train.pin_memory, train.persistent_workers, train.prefetch_factor) == (2, True, True, 4)
    assert (valid.batch_size, valid.prefetch_factor) == (4, 4)
    cpu, _ = dataset_loaders(dataset, dataset, TrainSettings(batch_size=2, workers=0), torch.device("cpu"))
    assert (cpu.num_workers, cpu.pin_memory, cpu.prefetch_factor) == (0, False, None)
