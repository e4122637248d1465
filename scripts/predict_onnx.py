"""The standalone predictor of an exported run (`torchgraft export RUN`): numpy, onnxruntime, and Pillow
(images) or tokenizers (texts); no torch, no torchgraft. `python predict_onnx.py RUN INPUT...`"""

import json
import sys

import numpy as np
import onnxruntime as ort


def predict(run: str, item: str) -> tuple[np.ndarray, dict]:
    """The model's output for one image path or text: probabilities (per class; segmentation: per class and
    pixel, at the image's size) or regression values, as `torchgraft predict` computes them."""
    with open(f"{run}/preprocessing.json") as file:
        prep = json.load(file)
    session = ort.InferenceSession(f"{run}/{prep['model']}", providers=["CPUExecutionProvider"])
    if "text" in prep:  # the run's own tokenizer, truncated as in training, one text unpadded
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(f"{run}/{prep['text']['tokenizer']}tokenizer.json")
        tokenizer.enable_truncation(prep["text"]["max_length"])
        tokenizer.no_padding()
        encoding = tokenizer.encode(item)
        fields = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
                  "token_type_ids": encoding.type_ids}  # fmt: skip
        feeds = {name: np.asarray([fields[name]], np.int64) for name in prep["inputs"]}
    else:  # decoded pixels: the graph resizes, crops and normalises as validation did
        from PIL import Image, ImageOps

        image = ImageOps.exif_transpose(Image.open(item))
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        feeds = {"image": np.asarray(image.convert("RGB"))[None]}  # (1, H, W, 3) uint8
    return session.run(None, feeds)[0][0], prep


if __name__ == "__main__":
    for item in sys.argv[2:]:
        output, prep = predict(sys.argv[1], item)
        if output.ndim == 3:  # segmentation: each class's share of the pixels
            labels = output.argmax(axis=0)
            shares = np.bincount(labels.ravel(), minlength=len(prep["classes"])) / labels.size
            print(item, "  ".join(f"{prep['classes'][i]} {shares[i]:.4f}" for i in shares.argsort()[::-1]))
        else:  # probabilities or values, largest first
            print(item, "  ".join(f"{prep['classes'][i]} {output[i]:.6f}" for i in output.argsort()[::-1]))
