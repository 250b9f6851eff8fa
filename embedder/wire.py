"""How vectors are packed in EmbedResponse.embeddings: the VectorEncoding of the proto <-> the precisions
of embedder/feature_sets.py, for the server (encode) and the client (decode). No TensorFlow here.

A set stored in float16 goes out as float16 only to a caller that accepts it; a float32 set always goes
out as float32 (the wire never rounds). Upcasting float16 to float32 is exact, so an old caller reads
the same numbers as a new one.
"""

from __future__ import annotations

import numpy as np

from embedder.feature_sets import FLOAT16, FLOAT32, PRECISIONS
from embedder.v1 import embedder_pb2
from polyhead.errors import PolyheadError, ValidationError

ENCODING_OF_PRECISION = {FLOAT32: embedder_pb2.FLOAT32, FLOAT16: embedder_pb2.FLOAT16}
PRECISION_OF_ENCODING = {v: k for k, v in ENCODING_OF_PRECISION.items()}


def check_accept(accept_encoding: int) -> int:
    """A request's accept_encoding, or INVALID_ARGUMENT naming it (proto3 enums carry any int)."""
    if accept_encoding not in PRECISION_OF_ENCODING:
        names = ", ".join(f"{embedder_pb2.VectorEncoding.Name(v)} ({v})" for v in PRECISION_OF_ENCODING)
        raise ValidationError(f"accept_encoding: unknown VectorEncoding {accept_encoding}; expected one of {names}",
                              field="accept_encoding")
    return accept_encoding


def encode(vectors: np.ndarray, accept_encoding: int) -> tuple[bytes, int]:
    """(embeddings bytes, encoding): as stored when the caller accepts that encoding, else float32."""
    float16 = vectors.dtype == PRECISIONS[FLOAT16].dtype
    encoding = embedder_pb2.FLOAT16 if float16 and accept_encoding == embedder_pb2.FLOAT16 else embedder_pb2.FLOAT32
    return vectors.astype(PRECISIONS[PRECISION_OF_ENCODING[encoding]].dtype, copy=False).tobytes(), encoding


def decode(embeddings: bytes, n: int, dim: int, encoding: int) -> np.ndarray:
    """[n, dim] float32, whatever the encoding (callers never see float16)."""
    precision = PRECISION_OF_ENCODING.get(encoding)
    if precision is None:  # a server newer than this client answered what it was not asked for
        raise PolyheadError(f"encoding: the embedder answered VectorEncoding {encoding}, which this client "
                            f"cannot read", field="encoding")
    if not n:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(embeddings, dtype=PRECISIONS[precision].dtype).reshape(n, dim).astype(np.float32, copy=False)
