"""Keep an exported graph lean under ONNX Runtime's *default* ``SessionOptions``.

ONNX Runtime's allocation planner (memory reuse, on by default and not configurable in e.g.
Triton's onnxruntime backend) hands a dead buffer to the next tensor of the *same symbolic
shape*, however far away, and keeps the buffer allocated until that tensor dies. N3Net's N3
blocks (``nls.0``, ``nls.1``, ...) compute tensors of identical shapes, so every buffer of the
first block's KNN (``patches x 225`` logits, Gram tiles, softmax rounds: ~1.2 GB at 481x321 for
the paper preset) stayed allocated through the CNN that follows, until its twin in the next
block took it over: peak RSS 2.8x that of a session with ``enable_mem_reuse=False``.

:func:`separate_block_shapes` gives the tensors each later N3 block produces their own
symbolic dimension names (``height`` -> ``height@nls.1``) in the graph's ``value_info``. The
planner compares dim names, so it no longer pairs a buffer of one block with a tensor of
another, while reuse inside a block (short-lived) stays. Only shape annotations change: the
computation, the output (bit for bit), the op set and the graph's inputs/outputs are untouched.
A graph with *every* axis fixed has no symbolic dims (ONNX Runtime infers concrete shapes and
overwrites names written into ``value_info``), so this cannot apply to it: that is why a fixed-size
export keeps a symbolic batch axis by default (:func:`~n3deploy.export.onnx_export.export_onnx`).
"""

from __future__ import annotations

import re

import onnx

__all__ = ["BLOCK_SCOPE", "block_of", "separate_block_shapes"]

# node names are "<torch module scope>/<op>"; the N3 blocks' modules are nls.0, nls.1, ...
BLOCK_SCOPE = re.compile(r"^nls\.(\d+)(?:[./]|$)")


def block_of(node: onnx.NodeProto) -> int | None:
    """The N3 block index of a node (from its ``nls.<i>`` scope), or ``None`` outside the blocks."""
    m = BLOCK_SCOPE.match(node.name)
    return int(m.group(1)) if m else None


def separate_block_shapes(model: onnx.ModelProto) -> int:
    """Suffix the symbolic dims of every tensor produced inside N3 block ``i >= 1`` with ``@nls.<i>``.

    Edits ``model`` in place (``value_info`` only; graph inputs/outputs keep their names) and
    returns the number of dims renamed. Idempotent.
    """
    graph = model.graph
    block = {o: b for node in graph.node if (b := block_of(node)) for o in node.output if o}
    outputs = {o.name for o in graph.output}
    renamed = 0
    for vi in graph.value_info:
        b = block.get(vi.name)
        if not b or vi.name in outputs:
            continue
        suffix = f"@nls.{b}"
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param and not dim.dim_param.endswith(suffix):
                dim.dim_param += suffix
                renamed += 1
    return renamed
