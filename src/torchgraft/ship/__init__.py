"""The shipping side: what leaves a run and is used without the training code.

One word, one meaning: an **export** is a trained model as files that rebuild it without the run — always
``model.safetensors`` + ``model.json`` (:func:`export_model` writes them, :func:`load_exported` rebuilds the
network from them bit for bit), and, converted from those, an ONNX file or a ``torch.export`` program with
``preprocessing.json`` (:func:`deploy`, ``torchgraft export RUN_DIR --format onnx|pt2``). :mod:`predict` runs an
export on images, masks or texts as its task decodes outputs.
"""

from torchgraft.ship.deploy import DEPLOY_FORMATS, DeployError, DeployReport, deploy
from torchgraft.ship.export import Exported, ExportError, export_model, load_exported
from torchgraft.ship.predict import MaskPrediction, Prediction, predict_images, predict_masks, predict_texts

__all__ = [
    "DEPLOY_FORMATS",
    "DeployError",
    "DeployReport",
    "ExportError",
    "Exported",
    "MaskPrediction",
    "Prediction",
    "deploy",
    "export_model",
    "load_exported",
    "predict_images",
    "predict_masks",
    "predict_texts",
]
