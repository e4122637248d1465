"""Any module as one checked file: an ONNX model (ONNX Runtime) or a ``torch.export`` program (``.pt2``).

:func:`export_program` exports a module called with plain tensors, with dynamic batch (and sequence) axes, then
runs the file and the module on the same inputs and refuses a file whose outputs differ by more than a
tolerance. When the exporter fails, :func:`find_culprit` names the smallest submodule that fails to export on
its own (each submodule tried with the arguments it received on the example inputs), and the error carries
the exporter's own summary, the user's line of code and the fallbacks.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchgraft.choices import DEPLOY_FORMATS

__all__ = ["DEPLOY_FORMATS", "DeployError", "export_program", "find_culprit"]


class DeployError(ValueError):
    """A deployment export failed (exporter error, missing extra) or does not match the trained model."""


def _dynamic_shapes(
    module: nn.Module, inputs: tuple[Any, ...], names: Sequence[str], dynamic: bool, size: bool
) -> tuple[Any, ...] | None:
    """Per input, the batch axis (with ``size``, an image's height and width: axes 1, 2 of uint8 ``(N, H, W,
    3)`` pixels, 2, 3 of a float ``(N, 3, H, W)`` batch; a text's sequence axis always), nested as
    ``module.forward`` takes its inputs (one tuple for ``forward(*inputs)``, else one per argument)."""
    if not dynamic:
        return None
    batch = torch.export.Dim("batch", max=4096)
    if list(names) == ["image"]:
        axes: tuple[dict[int, Any], ...] = ({0: batch},)
        if size:
            first = 1 if inputs[0].dtype == torch.uint8 else 2
            height, width = torch.export.Dim("height", min=2, max=8192), torch.export.Dim("width", min=2, max=8192)
            axes = ({0: batch, first: height, first + 1: width},)
    else:
        sequence = torch.export.Dim("sequence", max=8192)
        axes = tuple({0: batch, 1: sequence} for _ in names)
    kinds = [p.kind for p in inspect.signature(module.forward).parameters.values()]
    return (axes,) if inspect.Parameter.VAR_POSITIONAL in kinds else axes


def _quietly(function: Callable[[], Any]) -> Any:
    """Run an exporter without its progress lines and warnings (errors still propagate)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function()


def _export_onnx(module: nn.Module, inputs: tuple[Any, ...], names: Sequence[str], dynamic: Any, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as error:
        raise DeployError("ONNX export needs onnx and onnxscript: pip install 'torchgraft[export]'.") from error
    output = getattr(module, "output_name", "output")
    _quietly(
        lambda: torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(names),
            output_names=[output],
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
        )
    )


def _export_pt2(module: nn.Module, inputs: tuple[Any, ...], dynamic: Any, path: Path) -> None:
    program = _quietly(lambda: torch.export.export(module, inputs, dynamic_shapes=dynamic))
    torch.export.save(program, str(path))


def _captured_inputs(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments every submodule is first called with, on ``inputs``."""
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    handles = []
    for name, module in model.named_modules():
        if name:

            def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
                seen.setdefault(name, (args, kwargs))

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def find_culprit(model: nn.Module, inputs: tuple[Any, ...]) -> str | None:
    """The name of the smallest submodule of ``model`` that ``torch.export`` cannot export on its own (with
    the arguments it receives on ``inputs``), or ``None`` when every part exports (the whole fails only as
    a whole)."""
    calls = _captured_inputs(model, inputs)
    culprit, children = None, [n for n in calls if "." not in n]
    while children:
        failing = None
        for name in children:
            part, (args, kwargs) = model.get_submodule(name), calls[name]
            try:
                _quietly(lambda part=part, args=args, kwargs=kwargs: torch.export.export(part, args, kwargs))
            except Exception:
                failing = name
                break
        if failing is None:
            break
        culprit = failing
        children = [n for n in calls if n.startswith(failing + ".") and "." not in n[len(failing) + 1 :]]
    return culprit


def _summary(message: str) -> str:
    """The line of an exporter's message that says what went wrong (after its '## Exception summary')."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in message.splitlines()]
    lines = [line for line in lines if line]
    summary = lines[0] if lines else "no message"
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        summary = after[0] if after else summary
    if "The following call raised this error:" in lines:  # the user's line of code
        at = lines.index("The following call raised this error:")
        summary += " (at " + "; ".join(lines[at + 1 : at + 3]) + ")"
    return summary


def _explain(error: Exception, module: nn.Module, inputs: tuple[Any, ...], format: str) -> DeployError:
    try:
        culprit = find_culprit(module, inputs)
    except Exception:  # the search itself could not run the model: report the exporter's error alone
        culprit = None
    where = ""
    if culprit:
        kind = type(module.get_submodule(culprit)).__name__
        where = f" in module '{culprit.removeprefix('model.')}' ({kind})"
    other = "pt2" if format == "onnx" else "onnx"
    return DeployError(
        f"{format} export failed{where}: {_summary(str(error))[:400]}. Fallbacks: rewrite that module's "
        f"data-dependent Python control flow with torch.where / torch.cond; --static if a dynamic axis is the "
        f"problem; --format {other} if only this exporter fails; or ship model.safetensors + model.json "
        f"(runs with torchgraft)."
    )


def _run_file(path: Path, format: str, names: Sequence[str], inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    if format == "pt2":
        program = torch.export.load(str(path)).module()
        with torch.no_grad():
            return program(*inputs).numpy()
    try:
        import onnxruntime
    except ImportError as error:
        raise DeployError("checking the ONNX file needs onnxruntime: pip install 'torchgraft[export]'.") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x.numpy() for name, x in zip(names, inputs, strict=True)})[0]


def export_program(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    format: str = "onnx",
    input_names: Sequence[str] = ("image",),
    dynamic: bool = True,
    dynamic_size: bool = False,
    tolerance: float = 1e-4,
    reference: nn.Module | None = None,
    checks: Sequence[tuple[torch.Tensor, ...]] | None = None,
    on_check: Callable[[int, int], None] | None = None,
) -> float:
    """Export ``module`` (called as ``module(*inputs)``, returning one tensor) to ``path`` and check the file's
    outputs on ``inputs`` against the module's; returns the largest absolute difference.

    Args:
        module: any module in eval mode (:func:`deployable` makes one from an exported run).
        inputs: example inputs, also what the outputs are compared on.
        path: the file to write (``.onnx`` or ``.pt2``); removed again if the check fails.
        format: ``"onnx"`` (dynamo exporter, checked with ONNX Runtime's CPU provider) or ``"pt2"``
            (``torch.export``, checked with ``torch.export.load``).
        input_names: the inputs' names; ``["image"]`` gets a dynamic batch axis, other inputs (token ids and
            masks) dynamic batch and sequence axes.
        dynamic: dynamic axes as above, else the shapes of ``inputs``.
        dynamic_size: also dynamic image height and width (from 32 pixels; a network that needs one size,
            such as a ViT, cannot export so).
        tolerance: the largest absolute difference accepted.
        reference: what the file's outputs must match (default ``module``; :func:`deploy` passes the model
            as loaded, before it was made traceable).
        checks: the calls to compare on, each a tuple like ``inputs`` (default ``[inputs]``; images of
            different sizes are compared one call each).
        on_check: called as ``on_check(done, total)`` after each check call (progress).

    Raises:
        DeployError: the exporter failed (naming the smallest module that fails on its own, and the
            fallbacks), an extra is missing, or outputs differ by more than ``tolerance``.
    """
    path = Path(path)
    shapes = _dynamic_shapes(module, inputs, input_names, dynamic, dynamic_size)
    try:
        if format == "onnx":
            _export_onnx(module, inputs, input_names, shapes, path)
        elif format == "pt2":
            _export_pt2(module, inputs, shapes, path)
        else:
            raise DeployError(f"export: format {format!r}; choose one of {DEPLOY_FORMATS}.")
    except DeployError:
        raise
    except Exception as error:
        path.unlink(missing_ok=True)
        raise _explain(error, module, inputs, format) from error
    worst = 0.0
    calls = list(checks) if checks is not None else [inputs]
    for done, call in enumerate(calls, 1):
        with torch.no_grad():
            expected = (reference or module)(*call).numpy()
        got = _run_file(path, format, input_names, call)
        difference = float(np.abs(got - expected).max()) if expected.size else 0.0
        if got.shape != expected.shape or not difference <= tolerance:
            path.unlink(missing_ok=True)
            raise DeployError(
                f"export: the {format} file's outputs differ from the model's by {difference:.3g} (shape "
                f"{got.shape} vs {expected.shape}) on the check inputs, more than {tolerance:g}; the file was removed."
            )
        worst = max(worst, difference)
        if on_check is not None:
            on_check(done, len(calls))
    return worst
