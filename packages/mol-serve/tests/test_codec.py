"""decode_tensor against numpy references for each dtype, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from mol_core.proto.mol.v1 import retrieval_pb2
from mol_serve.client import pack_tensor
from mol_serve.codec import decode_tensor
from mol_serve.errors import InvalidRequest


def test_float32_and_float16_round_trip() -> None:
    values = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(decode_tensor(pack_tensor(values), (2, 3), "q").numpy(), values)
    half = decode_tensor(pack_tensor(values, "float16"), (2, 3), "q").numpy()
    np.testing.assert_array_equal(half, values.astype(np.float16).astype(np.float32))


def test_bfloat16_is_the_upper_half_of_float32() -> None:
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)  # exactly representable in bfloat16
    upper = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    message = retrieval_pb2.Embeddings(data=upper, dtype=retrieval_pb2.DTYPE_BFLOAT16, shape=[4])
    np.testing.assert_array_equal(decode_tensor(message, (4,), "q").numpy(), values)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (retrieval_pb2.Embeddings(data=b"\x00" * 24, dtype=0, shape=[2, 3]), "dtype must be one of"),
        (retrieval_pb2.Embeddings(data=b"\x00" * 24, dtype=1, shape=[3, 2]), "shape must be [2, 3]"),
        (retrieval_pb2.Embeddings(data=b"\x00" * 20, dtype=1, shape=[2, 3]), "20 bytes do not match"),
        (retrieval_pb2.Embeddings(data=np.full(6, np.nan, "<f4").tobytes(), dtype=1, shape=[2, 3]), "finite"),
    ],
)
def test_refusals_name_the_problem(message: retrieval_pb2.Embeddings, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_tensor(message, (2, 3), "query 0 embeddings")
    assert fragment in str(info.value)
    assert "query 0 embeddings" in str(info.value)
