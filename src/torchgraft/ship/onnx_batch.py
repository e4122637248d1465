"""A one-image ONNX model run over a batch axis: the whole graph inside an ONNX ``Loop``.

torchvision's detectors handle a batch as a Python list, one image at a time (each image is resized on its own
and its detections are a table of their own length), and the tap hooks of a grafted backbone write module state,
which ``torch.export``'s ``scan`` refuses. So the detector is exported for one image ``(1, H, W, 3)`` and
:func:`loop_over_batch` makes that graph the body of a ``Loop`` whose trip count is the batch size: the body
slices image ``i`` from the outer input and emits its fixed-size outputs, which the ``Loop`` stacks. The
weights stay initializers of the outer graph (a subgraph reads its outer scope), so the file is no bigger.
"""

from __future__ import annotations

from typing import Any

__all__ = ["loop_over_batch"]

_STEP = "per_image/"  # prefix of every value name inside the loop body (names must be unique in the file)


def _rename(graph: Any, keep: set[str]) -> None:
    """Prefix every value name of ``graph`` (and of its nested subgraphs) except those in ``keep``."""

    def renamed(name: str) -> str:
        return name if not name or name in keep else _STEP + name

    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = renamed(value.name)
    for node in graph.node:
        node.input[:] = [renamed(n) for n in node.input]
        node.output[:] = [renamed(n) for n in node.output]
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                _rename(sub, keep)


def _body(graph: Any, image: str) -> Any:
    """The loop body: slice image ``i`` of the outer ``image`` and run ``graph``'s nodes on it."""
    from onnx import TensorProto, helper

    outputs = [(o.name, o.type.tensor_type.elem_type) for o in graph.output]
    _rename(graph, {t.name for t in graph.initializer})
    step_input = graph.input[0].name
    slicing = [
        helper.make_node("Unsqueeze", ["iteration", "per_image_axis"], ["per_image_start"]),
        helper.make_node("Add", ["per_image_start", "per_image_one"], ["per_image_end"]),
        helper.make_node("Slice", [image, "per_image_start", "per_image_end", "per_image_axis"], [step_input]),
        helper.make_node("Identity", ["condition"], ["condition_out"]),
    ]
    return helper.make_graph(
        [*slicing, *graph.node],
        "per_image",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
         *(helper.make_tensor_value_info(_STEP + name, kind, None) for name, kind in outputs)],
    )  # fmt: skip


def loop_over_batch(model: Any, *, batch: str = "batch") -> Any:
    """``model`` (an ``onnx.ModelProto`` taking one input of batch size 1 and returning outputs whose first axis
    is 1) as a model taking any batch size ``N`` of that input: each output becomes ``(N, ...)``, row ``i``
    computed from input row ``i`` alone (an ONNX ``Loop`` over the rows).

    Example:
        >>> batched = loop_over_batch(onnx.load("one_image.onnx"))   # image (1, H, W, 3) -> (N, H, W, 3)
        >>> onnx.save(batched, "model.onnx")
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    image = type(graph.input[0])()
    image.CopyFrom(graph.input[0])  # before the body renames the graph's values
    outputs = [(o.name, o.type.tensor_type.elem_type, o.type.tensor_type.shape) for o in graph.output]
    initializers = list(graph.initializer)
    body = _body(graph, image.name)
    constants = [
        numpy_helper.from_array(np.array([0], dtype="int64"), "per_image_axis"),
        numpy_helper.from_array(np.array([1], dtype="int64"), "per_image_one"),
        numpy_helper.from_array(np.array(0, dtype="int64"), "batch_axis"),
    ]
    stacked = [f"{name}_stacked" for name, _, _ in outputs]
    nodes = [
        helper.make_node("Shape", [image.name], ["batch_shape"]),
        helper.make_node("Gather", ["batch_shape", "batch_axis"], ["batch_count"]),
        helper.make_node("Loop", ["batch_count", ""], stacked, body=body),
        *(
            helper.make_node("Squeeze", [s, "per_image_one"], [name])
            for s, (name, _, _) in zip(stacked, outputs, strict=True)
        ),
    ]
    image.type.tensor_type.shape.dim[0].ClearField("dim_value")
    image.type.tensor_type.shape.dim[0].dim_param = batch
    values = []
    for name, kind, shape in outputs:
        dims = [d.dim_param or d.dim_value or None for d in shape.dim]
        values.append(helper.make_tensor_value_info(name, kind, [batch, *dims[1:]]))
    outer = helper.make_graph(nodes, graph.name or "batched", [image], values, [*initializers, *constants])
    batched = helper.make_model(outer, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    batched.functions.extend(model.functions)
    batched.metadata_props.extend(model.metadata_props)
    return batched
