"""Sums over a pixel span in one vector register, for the `cpu` backend's numba kernels.

A running sum in a loop is a serial chain: LLVM vectorises it only if it may reassociate the
additions, which the kernels' fastmath flags leave out (see `cpu_common.FASTMATH`). Written in
scalar code, even eight independent lane sums stay scalar (the SLP vectoriser does not pack loop
phis). So these intrinsics emit the vector code themselves: the span is read 8 values at a time
into an 8-lane accumulator, which is then added pairwise ((l0 + l1) + (l2 + l3)) + (...). Every
addition is in the IR in a fixed order, so fresh and cached kernels compute the same bits, on any
target (LLVM splits or widens the 8 lanes to the machine's registers).

``n`` must be a multiple of 8 (the kernels' spans are whole 8-pixel rows of a tile half); a rest is
not read. Arrays are 1-D and contiguous, of float32 or float64.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 8


def _is_span(x) -> bool:
    return isinstance(x, types.Array) and isinstance(x.dtype, types.Float) and x.ndim == 1 and x.layout == "C"


def _lane_codegen(array_type: types.Array, n_arrays: int):
    """codegen of sum_q prod_a x_a[q] over q < n for `n_arrays` arrays (1: a sum, 2: a dot product)."""

    def codegen(context, builder, signature, args):
        *arrays, count = args
        vector = ir.VectorType(context.get_value_type(array_type.dtype), LANES)
        align = array_type.dtype.bitwidth // 8
        pointers = [context.make_array(array_type)(context, builder, a).data for a in arrays[:n_arrays]]
        acc = cgutils.alloca_once_value(builder, ir.Constant(vector, [0.0] * LANES))
        rows = builder.sdiv(count, ir.Constant(count.type, LANES))
        with cgutils.for_range(builder, rows) as loop:
            offset = builder.mul(loop.index, ir.Constant(loop.index.type, LANES))
            values = [builder.load(builder.bitcast(builder.gep(p, [offset], inbounds=True), vector.as_pointer()),
                                   align=align) for p in pointers]
            term = values[0]
            for v in values[1:]:
                term = builder.fmul(term, v, flags=("contract",))
            builder.store(builder.fadd(builder.load(acc), term, flags=("contract",)), acc)
        total = builder.load(acc)
        lanes = [builder.extract_element(total, ir.Constant(ir.IntType(32), i)) for i in range(LANES)]
        while len(lanes) > 1:
            lanes = [builder.fadd(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
        return lanes[0]

    return codegen


@intrinsic
def lane_sum(typingctx, x, n):
    """sum of x[:n] (n a multiple of 8) in 8 lanes, added pairwise (see the module docstring)."""
    if not (_is_span(x) and isinstance(n, types.Integer)):
        return None
    return x.dtype(x, n), _lane_codegen(x, 1)


@intrinsic
def lane_dot(typingctx, x, y, n):
    """sum of x[:n] * y[:n] (n a multiple of 8) in 8 lanes, added pairwise."""
    if not (_is_span(x) and x == y and isinstance(n, types.Integer)):
        return None
    return x.dtype(x, y, n), _lane_codegen(x, 2)


@njit(cache=True, inline="always")
def span_dot(x, y, n):
    """sum of x[:n] * y[:n] for any n: the whole 8-value runs by `lane_dot`, the rest added in order."""
    whole = n - n % LANES
    total = lane_dot(x, y, whole) if whole else x[0] - x[0]
    for i in range(whole, n):
        total += x[i] * y[i]
    return total
