"""The OIP v2 codec against tritonclient's own request encoder and response decoder (no Ray, no server)."""

from __future__ import annotations

import json
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput, InferResult

from rayline.serving.errors import InputError
from rayline.serving.oip import InferCall, encode_infer_response, parse_infer_request

pytestmark = pytest.mark.filterwarnings("error")  # a numpy overflow warning is a bug, not a refusal

HEADER = "Inference-Header-Content-Length"


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> InferInput:
    infer_input = InferInput(name, list(array.shape), datatype)
    return infer_input.set_data_from_numpy(array, binary_data=binary)


def triton_body(inputs: list[InferInput], outputs: list[InferRequestedOutput] | None = None,
                request_id: str = "") -> tuple[bytes, int | None]:
    return InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id=request_id)


def raw_body(header: dict[str, Any], *buffers: bytes) -> tuple[bytes, int | None]:
    encoded = json.dumps(header).encode()
    return (encoded + b"".join(buffers), len(encoded)) if buffers else (encoded, None)


def one_input(**fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", **fields}]}


def decoded(body: bytes, headers: dict[str, str]) -> InferResult:
    header_length = headers.get(HEADER)
    return InferenceServerClient.parse_response_body(body, header_length=None if header_length is None
                                                     else int(header_length))


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


ARRAYS = {
    "FP32": np.array([[0.5, -1.25, 3.0], [1e30, -0.0, 7.5]], dtype=np.float32),
    "FP64": np.array([[np.pi, -1e300, 2.0**-1074]]),
    "FP16": np.array([1.5, -65504.0, 0.0], dtype=np.float16),
    "INT64": np.array([[np.iinfo(np.int64).min, 0], [1, np.iinfo(np.int64).max]]),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "UINT8": np.array([0, 255, 7], dtype=np.uint8),
    "UINT64": np.array([np.iinfo(np.uint64).max, 0], dtype=np.uint64),
    "BOOL": np.array([[True, False], [False, True]]),
    "BYTES": np.array([b"plain", "\u00e9t\u00e9 \u2603".encode(), b""], dtype=object),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_tritonclient_inputs_decode_exactly(datatype: str, binary: bool) -> None:
    array = ARRAYS[datatype]
    body, json_length = triton_body([tensor("x", array, datatype, binary)])
    assert (json_length is not None) == binary
    [decoded_input] = parse_infer_request(body, json_length).inputs
    assert (decoded_input.name, decoded_input.datatype, decoded_input.shape) == ("x", datatype, array.shape)
    assert decoded_input.data.dtype == array.dtype
    assert decoded_input.data.tolist() == array.tolist()


def test_bf16_arrives_as_float32_and_only_as_binary() -> None:
    array = np.array([[1.5, -2.25], [3.0e38, 2.0**-130]], dtype=ml_dtypes.bfloat16)
    [decoded_input] = parse_infer_request(*triton_body([tensor("x", array, "BF16")])).inputs
    assert decoded_input.datatype == "BF16" and decoded_input.data.dtype == np.float32
    assert decoded_input.data.tolist() == array.astype(np.float32).tolist()
    body, json_length = raw_body(one_input(shape=[1], datatype="BF16", data=[1.0]))
    with pytest.raises(InputError, match="BF16 data must be sent as binary"):
        parse_infer_request(body, json_length)


def test_mixed_json_and_binary_inputs_keep_their_order_and_buffers() -> None:
    first, second, third = np.arange(6.0).reshape(3, 2), np.array([b"a", b"bc"], dtype=object), np.array([7, 8])
    body, json_length = triton_body([tensor("first", first, "FP64"), tensor("json", third, "INT64", binary=False),
                                     tensor("second", second, "BYTES")], request_id="req-1")
    call = parse_infer_request(body, json_length)
    assert call.id == "req-1"
    assert [t.name for t in call.inputs] == ["first", "json", "second"]
    assert call.inputs[0].data.tolist() == first.tolist()
    assert call.inputs[1].data.tolist() == [7, 8]
    assert call.inputs[2].data.tolist() == [b"a", b"bc"]


def test_empty_tensors_round_trip() -> None:
    inputs = [tensor("f", np.zeros((0, 3), dtype=np.float32), "FP32"),
              tensor("s", np.array([], dtype=object), "BYTES"),
              tensor("j", np.zeros((2, 0), dtype=np.int64), "INT64", binary=False)]
    call = parse_infer_request(*triton_body(inputs))
    assert [(t.shape, t.data.shape, t.data.dtype.kind) for t in call.inputs] == [
        ((0, 3), (0, 3), "f"), ((0,), (0,), "O"), ((2, 0), (2, 0), "i")]


def test_nested_json_data_is_read_row_major() -> None:
    nested = {"name": "n", "shape": [2, 3], "datatype": "INT32", "data": [[1, 2, 3], [4, 5, 6]]}
    regrouped = {"name": "r", "shape": [3, 2], "datatype": "FP32", "data": [[1, 2, 3], [4.5, 5, 6]]}
    words = {"name": "w", "shape": [1, 2], "datatype": "BYTES", "data": [["\u00e9", "b"]]}
    call = parse_infer_request(*raw_body({"inputs": [nested, regrouped, words]}))
    assert call.inputs[0].data.tolist() == [[1, 2, 3], [4, 5, 6]] and call.inputs[0].data.dtype == np.int32
    assert call.inputs[1].data.tolist() == [[1, 2], [3, 4.5], [5, 6]]
    assert call.inputs[2].data.tolist() == [["\u00e9".encode(), b"b"]]


def test_default_tritonclient_request_gets_every_output_in_binary() -> None:
    body, json_length = triton_body([tensor("x", np.ones((2, 2), np.float32), "FP32")])
    call = parse_infer_request(body, json_length)
    assert json.loads(body[:json_length])["parameters"] == {"binary_data_output": True}
    assert (call.outputs, call.binary_all) == (None, True)
    outputs = {"prediction": np.array(["cat", "d\u00f6g"], dtype=object), "probability": np.array([0.25, 0.75])}
    response, headers = encode_infer_response(call, "iris", "3", outputs)
    assert headers["Content-Type"] == "application/octet-stream"
    assert int(headers[HEADER]) < len(response)
    result = decoded(response, headers)
    assert result.get_response()["model_name"] == "iris" and result.get_response()["model_version"] == "3"
    assert "id" not in result.get_response()
    assert result.as_numpy("prediction").tolist() == [b"cat", "d\u00f6g".encode()]
    assert result.as_numpy("probability").tolist() == [0.25, 0.75]


def test_requested_outputs_mix_binary_and_json() -> None:
    outputs = [InferRequestedOutput("b"), InferRequestedOutput("j", binary_data=False)]
    call = parse_infer_request(*triton_body([tensor("x", np.ones(1), "FP64")], outputs, request_id="7"))
    assert (call.outputs, call.binary_outputs, call.binary_all) == (["b", "j"], frozenset({"b"}), False)
    values = {"j": np.array([[1, 2], [3, 4]]), "b": np.array([[0.5], [1.5]], dtype=np.float32),
              "unrequested": np.array([9.0])}
    response, headers = encode_infer_response(call, "m", "1", values)
    result = decoded(response, headers)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["b", "j"]
    assert result.get_response()["id"] == "7"
    assert result.get_output("j")["data"] == [1, 2, 3, 4]
    assert result.as_numpy("j").tolist() == [[1, 2], [3, 4]] and result.as_numpy("j").dtype == np.int64
    assert result.as_numpy("b").tolist() == [[0.5], [1.5]] and result.as_numpy("b").dtype == np.float32


def test_all_json_outputs_make_a_plain_json_response() -> None:
    outputs = [InferRequestedOutput(name, binary_data=False) for name in ("f", "i", "t", "s", "h")]
    call = parse_infer_request(*triton_body([tensor("x", np.ones(1), "FP64")], outputs))
    values = {"f": np.array([0.1, 2.5]), "i": np.array([3, -4]), "t": np.array([True, False]),
              "s": np.array(["\u00e9", "x"]), "h": np.array([0.5], dtype=np.float16)}
    response, headers = encode_infer_response(call, "m", "1", values)
    assert headers == {"Content-Type": "application/json"}
    result = decoded(response, headers)
    assert {o["name"]: o["datatype"] for o in json.loads(response)["outputs"]} == {
        "f": "FP64", "i": "INT64", "t": "BOOL", "s": "BYTES", "h": "FP16"}
    assert result.as_numpy("f").tolist() == [0.1, 2.5]
    assert result.as_numpy("i").tolist() == [3, -4]
    assert result.as_numpy("t").tolist() == [True, False]
    assert result.as_numpy("s").tolist() == ["\u00e9", "x"]
    assert result.as_numpy("h").tolist() == [0.5]


@pytest.mark.parametrize(("array", "datatype", "expected"), [
    (np.array([1.5, -2.0]), "FP64", [1.5, -2.0]), (np.array([1.5], dtype=">f8"), "FP64", [1.5]),
    (np.array([[1.0, 2.0]]).T, "FP64", [[1.0], [2.0]]), (np.array([1.5], dtype=np.float32), "FP32", [1.5]),
    (np.array([5, 6]), "INT64", [5, 6]), (np.array([7], dtype=np.int32), "INT32", [7]),
    (np.array([200], dtype=np.uint8), "UINT8", [200]), (np.array([True, False]), "BOOL", [True, False]),
    (np.array(["a\u00e9"]), "BYTES", ["a\u00e9".encode()]), (np.array([b"\xff\x00"], dtype=object), "BYTES",
                                                         [b"\xff\x00"]),
    (np.array([1, "two", None], dtype=object), "BYTES", [b"1", b"two", b"None"]),
])
def test_binary_outputs_carry_numpy_datatypes(array: np.ndarray, datatype: str, expected: list[Any]) -> None:
    call = InferCall(None, [], ["out"], frozenset({"out"}), False)
    result = decoded(*encode_infer_response(call, "m", "1", {"out": array}))
    assert result.get_output("out")["datatype"] == datatype
    assert result.as_numpy("out").tolist() == expected


def test_binary_data_output_is_the_default_for_listed_outputs() -> None:
    header = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}],
              "parameters": {"binary_data_output": True},
              "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}]}
    call = parse_infer_request(*raw_body(header))
    assert call.binary("a") and not call.binary("b")


def test_empty_binary_outputs_need_no_binary_framing() -> None:
    call = InferCall(None, [], None, frozenset(), True)
    response, headers = encode_infer_response(call, "m", "1", {"out": np.zeros(0)})
    assert headers == {"Content-Type": "application/json"}
    assert decoded(response, headers).as_numpy("out").shape == (0,)


def test_unknown_requested_output_is_refused() -> None:
    call = InferCall(None, [], ["nope"], frozenset(), False)
    with pytest.raises(InputError, match="has no output 'nope'") as caught:
        encode_infer_response(call, "m", "1", {"prediction": np.zeros(1)})
    assert caught.value.status == 400


def test_non_utf8_bytes_cannot_go_out_as_json() -> None:
    call = InferCall(None, [], ["out"], frozenset(), False)
    with pytest.raises(InputError, match="not UTF-8") as caught:
        encode_infer_response(call, "m", "1", {"out": np.array([b"\xff"], dtype=object)})
    assert caught.value.status == 400


def test_outputs_without_an_oip_datatype_are_a_server_error() -> None:
    call = InferCall(None, [], None, frozenset(), False)
    with pytest.raises(TypeError, match="complex128"):
        encode_infer_response(call, "m", "1", {"out": np.array([1j])})


FP32_3 = np.arange(3, dtype="<f4").tobytes()
VALID, VALID_LENGTH = triton_body([tensor("x", np.arange(3, dtype=np.float32), "FP32")])
JSON_ONLY = json.dumps(one_input(shape=[1], datatype="FP32", data=[1.0])).encode()
DEEP = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def binary_input(datatype: str, shape: list[int], size: int, *buffers: bytes) -> tuple[bytes, int | None]:
    spec = {"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
    return raw_body({"inputs": [spec]}, *buffers)


def json_input(datatype: str, shape: list[int], data: Any) -> tuple[bytes, int | None]:
    return raw_body(one_input(shape=shape, datatype=datatype, data=data))


MALFORMED = [
    # (id, (body, json_length), status, fragment of the message)
    ("header-longer-than-body", (VALID, len(VALID) + 1), 400, "outside the body"),
    ("header-negative", (VALID, -1), 400, "outside the body"),
    ("header-not-utf8", (b'{"inputs": "\xff"}', None), 400, "not UTF-8"),
    ("header-not-json", (b'{"inputs": [', None), 400, "not valid JSON"),
    ("header-not-object", (b"[1, 2]", None), 400, "must be an object"),
    ("header-too-deep", (DEEP, None), 400, "nested too deeply"),
    ("header-huge-integer", (b'{"inputs": ' + b"9" * 5000 + b"}", None), 400, "not valid JSON"),
    ("no-inputs", raw_body({}), 400, "has no 'inputs'"),
    ("empty-inputs", raw_body({"inputs": []}), 400, "non-empty list"),
    ("unknown-request-field", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]), "model": "m"}),
     400, "unknown field 'model' in the request"),
    ("id-not-string", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]), "id": 5}), 400,
     "id must be a string"),
    ("request-parameters-not-object", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]),
                                                "parameters": [1]}), 400, "parameters of the request"),
    ("binary-data-output-not-bool", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]),
                                              "parameters": {"binary_data_output": 1}}), 400,
     "binary_data_output of the request must be true or false"),
    ("input-not-object", raw_body({"inputs": [5]}), 400, "inputs[0] must be an object"),
    ("input-without-name", raw_body({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}), 400,
     "inputs[0] needs a non-empty string name"),
    ("input-without-shape", raw_body(one_input(datatype="FP32", data=[1])), 400, "input 'x' has no 'shape'"),
    ("input-without-datatype", raw_body(one_input(shape=[1], data=[1])), 400, "input 'x' has no 'datatype'"),
    ("unknown-input-field", raw_body(one_input(shape=[1], datatype="FP32", data=[1], contents=[1])), 400,
     "unknown field 'contents' in input 'x'"),
    ("unknown-datatype", json_input("FP8", [1], [1]), 400, "input 'x' has unknown datatype 'FP8'"),
    ("datatype-not-string", json_input(["FP32"], [1], [1]), 400, "input 'x' has unknown datatype"),
    ("negative-dim", json_input("FP32", [-1], [1]), 400, "input 'x': shape must be"),
    ("fractional-dim", json_input("FP32", [1.5], [1]), 400, "input 'x': shape must be"),
    ("boolean-dim", json_input("FP32", [True], [1]), 400, "input 'x': shape must be"),
    ("shape-not-list", json_input("FP32", 3, [1, 2, 3]), 400, "input 'x': shape must be"),
    ("too-many-dims", json_input("FP32", [1] * 65, [1]), 400, "input 'x': shape must be"),
    ("data-and-binary", raw_body(one_input(shape=[1], datatype="FP32", data=[1],
                                           parameters={"binary_data_size": 4}), FP32_3[:4]), 400,
     "input 'x' needs exactly one of data and parameters.binary_data_size"),
    ("neither-data-nor-binary", raw_body(one_input(shape=[1], datatype="FP32")), 400,
     "input 'x' needs exactly one of"),
    ("data-not-array", json_input("FP32", [1], 1.0), 400, "input 'x': data must be a JSON array"),
    ("shared-memory-input", raw_body(one_input(shape=[1], datatype="FP32", data=[1],
                                               parameters={"shared_memory_region": "r"})), 400,
     "input 'x' asks for shared_memory_region"),
    ("duplicate-input", raw_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}),
     400, "input 'x' appears twice"),
    ("count-mismatch-json", json_input("FP32", [3], [1, 2]), 422, "input 'x': data holds 2 elements, shape needs 3"),
    ("count-mismatch-nested", json_input("INT64", [2, 2], [[1, 2], [3, 4], [5, 6]]), 422,
     "input 'x': data holds 6 elements, shape needs 4"),
    ("string-in-fp32", json_input("FP32", [2], [1.0, "2"]), 422, "input 'x': FP32 data must be numbers"),
    ("boolean-in-fp64", json_input("FP64", [2], [1.0, True]), 422, "input 'x': FP64 data must be numbers"),
    ("all-booleans-in-fp16", json_input("FP16", [2], [True, False]), 422, "input 'x': FP16 data must be numbers"),
    ("null-in-fp64", json_input("FP64", [1], [None]), 422, "input 'x': FP64 data must be numbers"),
    ("float-in-int64", json_input("INT64", [2], [1, 2.0]), 422, "input 'x': INT64 data must be integers"),
    ("number-in-bool", json_input("BOOL", [2], [True, 1]), 422, "input 'x': BOOL data must be booleans"),
    ("number-in-bytes", json_input("BYTES", [2], ["a", 1]), 422, "input 'x': BYTES data must be strings"),
    ("ragged-rows", json_input("FP32", [3], [[1, 2], [3]]), 422, "input 'x': data is not a rectangular array"),
    ("ragged-depth", json_input("FP32", [4], [[1, 2], [[3], [4]]]), 422, "input 'x': data is not a rectangular"),
    ("uint8-overflow", json_input("UINT8", [2], [1, 256]), 422, "input 'x': data holds values outside the range "
     "of UINT8"),
    ("uint-negative", json_input("UINT32", [1], [-1]), 422, "outside the range of UINT32"),
    ("int64-overflow", json_input("INT64", [1], [2**63]), 422, "outside the range of INT64"),
    ("fp32-overflow", json_input("FP32", [1], [1e39]), 422, "input 'x': data holds values outside the range of FP32"),
    ("fp64-overflow", json_input("FP64", [1], [10**400]), 422, "outside the range of FP64"),
    ("lone-surrogate", (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}',
                        None), 422, "input 'x': a string is not valid Unicode"),
    ("binary-size-mismatch", binary_input("FP32", [3], 8, FP32_3[:8]), 422,
     "input 'x': binary_data_size is 8 bytes, 3 FP32 elements take 12"),
    ("binary-size-negative", binary_input("FP32", [1], -4, FP32_3), 400,
     "input 'x': binary_data_size must be a non-negative integer"),
    ("binary-size-not-int", binary_input("FP32", [1], "4", FP32_3[:4]), 400,
     "input 'x': binary_data_size must be a non-negative integer"),
    ("binary-past-body", binary_input("FP32", [3], 12, FP32_3[:8]), 400,
     "input 'x': its 12 bytes of binary data run past the end of the body"),
    ("binary-without-header-length", binary_input("FP32", [3], 12), 400,
     "input 'x': its 12 bytes of binary data run past the end of the body (no Inference-Header-Content-Length"),
    ("bytes-after-last-buffer", binary_input("FP32", [3], 12, FP32_3, b"\x00"), 400,
     "1 bytes follow the JSON header and the inputs' binary data"),
    ("bytes-after-json-header", (JSON_ONLY + b"xx", len(JSON_ONLY)), 400, "2 bytes follow the JSON header"),
    ("bool-byte-not-0-or-1", binary_input("BOOL", [2], 2, b"\x01\x02"), 422, "input 'x': BOOL bytes must be 0 or 1"),
    ("bytes-length-past-buffer", binary_input("BYTES", [1], 6, struct.pack("<I", 4) + b"ab"), 400,
     "input 'x': BYTES element 0 claims 4 bytes, only 2 are left"),
    ("bytes-length-huge", binary_input("BYTES", [1], 5, struct.pack("<I", 2**32 - 1) + b"a"), 400,
     "input 'x': BYTES element 0 claims 4294967295 bytes, only 1 are left"),
    ("bytes-prefix-truncated", binary_input("BYTES", [2], 8, length_prefixed(b"a") + b"\x00" * 3), 400,
     "input 'x': the length prefix of BYTES element 1 runs past its buffer"),
    ("bytes-too-few-elements", binary_input("BYTES", [2], 9, length_prefixed(b"abcde")), 422,
     "input 'x': the BYTES buffer ends after 1 of 2 elements"),
    ("bytes-too-many-elements", binary_input("BYTES", [1], 10, length_prefixed(b"a", b"b")), 422,
     "input 'x': 5 bytes follow the last of 1 BYTES elements"),
    ("bytes-too-small-for-count", binary_input("BYTES", [10**12], 4, length_prefixed(b"")), 422,
     "input 'x': 4 bytes cannot hold 1000000000000 BYTES elements"),
    ("outputs-not-list", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]), "outputs": {"name": "y"}}),
     400, "outputs must be a list"),
    ("output-without-name", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]), "outputs": [{}]}), 400,
     "outputs[0] must be an object with a non-empty string name"),
    ("unknown-output-field", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]),
                                       "outputs": [{"name": "y", "datatype": "FP32"}]}), 400,
     "unknown field 'datatype' in output 'y'"),
    ("duplicate-output", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]),
                                   "outputs": [{"name": "y"}, {"name": "y"}]}), 400, "output 'y' is requested twice"),
    ("output-binary-not-bool", raw_body({**one_input(shape=[1], datatype="FP32", data=[1]),
                                         "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}), 400,
     "binary_data of output 'y' must be true or false"),
    ("classification-output", triton_body([tensor("x", np.ones(1), "FP64")],
                                          [InferRequestedOutput("y", class_count=3)]), 400,
     "output 'y' asks for classification"),
]


@pytest.mark.parametrize(("request_body", "status", "fragment"), [pytest.param(*case[1:], id=case[0])
                                                                  for case in MALFORMED])
def test_malformed_requests_are_refused(request_body: tuple[bytes, int | None], status: int, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_infer_request(*request_body)
    assert (caught.value.status, fragment in caught.value.error) == (status, True), caught.value.error


def test_valid_bodies_of_the_malformed_table_parse() -> None:
    """The table's bodies are one defect away from valid: these are the same builders without it."""
    assert parse_infer_request(VALID, VALID_LENGTH).inputs[0].data.tolist() == [0, 1, 2]
    assert parse_infer_request(*binary_input("FP32", [3], 12, FP32_3)).inputs[0].data.tolist() == [0, 1, 2]
    assert parse_infer_request(*binary_input("BYTES", [2], 10, length_prefixed(b"a", b"b"))).inputs[0].data.tolist() \
        == [b"a", b"b"]
    assert parse_infer_request(*binary_input("BOOL", [2], 2, b"\x01\x00")).inputs[0].data.tolist() == [True, False]
    assert parse_infer_request(*json_input("UINT8", [2], [0, 255])).inputs[0].data.tolist() == [0, 255]
    assert parse_infer_request(*json_input("FP32", [2], [3.4e38, float("inf")])).inputs[0].data[1] == np.inf
