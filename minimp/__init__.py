"""minimp: mixed-precision training, small enough to read and exact enough to trust."""

from minimp import amp, backend, formats, functional, nn, optim
from minimp.tensor import Tensor, as_dtype, bfloat16, float16, float32, no_grad, tensor

__all__ = [
    "Tensor",
    "amp",
    "as_dtype",
    "backend",
    "bfloat16",
    "float16",
    "float32",
    "formats",
    "functional",
    "nn",
    "no_grad",
    "optim",
    "tensor",
]
