"""smp's side of the segmentation benchmark; run with a Python that has segmentation-models-pytorch (no torchgraft).

Usage: python smp_segment.py DATA LITE0_WEIGHTS SIZE EPOCHS BATCH LR OUT_JSON

``smp.Unet("tu-efficientnet_lite0", encoder_weights=None)`` with the ImageNet Lite0 tensors copied into its
encoder by order and shape (smp's encoder is timm's ``features_only`` model: the classification network's
tensors up to its last block, in the same order), trained by a plain loop: AdamW (lr LR, weight decay 0.01),
``OneCycleLR`` over all steps, cross-entropy (255 ignored), the whole network from the first step, validation
after every epoch. The data pipeline is the one torchgraft's run uses (joint random resized crop + flip on
``tv_tensors``, ImageNet normalisation; validation resized to SIZE). Writes the wall time of the training
loop (validation included) and the validation confusion matrix as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Pairs(Dataset):
    def __init__(self, folder: Path, transform: v2.Compose) -> None:
        self.images = sorted((folder / "images").iterdir())
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.images[index]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(path).convert("RGB")))
        mask = np.asarray(Image.open(path.parent.parent / "masks" / f"{path.stem}.png")).astype(np.int64)
        image, mask = self.transform(image, tv_tensors.Mask(torch.from_numpy(mask)))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


def transforms(size: int, train: bool) -> v2.Compose:
    crop = (
        [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        if train
        else [v2.Resize((size, size), antialias=True)]
    )
    return v2.Compose(
        [*crop, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(MEAN, STD)]
    )


def model_with_weights(weights: str, n_classes: int) -> torch.nn.Module:
    model = smp.Unet("tu-efficientnet_lite0", encoder_weights=None, classes=n_classes)
    target = model.encoder.model.state_dict()
    source = list(torch.load(weights, map_location="cpu", weights_only=True).items())
    mapped = {}
    for (name, tensor), (_, value) in zip(
        target.items(), source, strict=False
    ):  # same order, the encoder stops earlier
        assert tensor.shape == value.shape, name
        mapped[name] = value
    model.encoder.model.load_state_dict(mapped)
    return model


@torch.no_grad()
def confusion(model: torch.nn.Module, loader: DataLoader, n: int) -> torch.Tensor:
    model.eval()
    matrix = torch.zeros(n, n, dtype=torch.long)
    for images, masks in loader:
        predicted = model(images).argmax(1)
        counted = masks != 255
        matrix += torch.bincount(masks[counted] * n + predicted[counted], minlength=n * n).view(n, n)
    return matrix


def main() -> None:
    data, weights, size, epochs, batch, lr, out = sys.argv[1:8]
    size, epochs, batch, lr = int(size), int(epochs), int(batch), float(lr)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    n = len((Path(data) / "classes.txt").read_text().split())
    train = DataLoader(
        Pairs(Path(data) / "train", transforms(size, True)),
        batch_size=batch,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
    )
    valid = DataLoader(Pairs(Path(data) / "valid", transforms(size, False)), batch_size=batch * 2, num_workers=2)
    model = model_with_weights(weights, n)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train))
    start, history = time.perf_counter(), []
    for _ in range(epochs):
        model.train()
        for images, masks in train:
            loss = torch.nn.functional.cross_entropy(model(images), masks, ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        matrix = confusion(model, valid, n)
        history.append(matrix.tolist())
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"seconds": seconds, "matrix": history[-1], "history": history}))


if __name__ == "__main__":
    main()
