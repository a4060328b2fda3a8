"""Open Inference Protocol v2 infer bodies, JSON and Triton's binary tensor data extension, as tritonclient speaks it.

Request: one JSON object; when the ``Inference-Header-Content-Length`` header gives its length, the raw buffers of
the inputs that carry ``parameters.binary_data_size`` follow it, back to back, in input order. Binary data are
little-endian and row-major; a BOOL element is one byte, 0 or 1; a BYTES element is a 4-byte little-endian length
and then its bytes; BF16 is only accepted as binary (as tritonclient sends it) and decodes, exactly, to float32.
JSON ``data`` may be flat or nested (rectangular, row-major). Numeric datatypes take JSON numbers only (integer
types: integers within the type's range; FP types: integers or floats, NaN/Infinity included, finite values within
range), BOOL takes ``true``/``false`` only, BYTES takes strings (stored as their UTF-8 bytes).

Response: ``application/json``, or, as Triton does, when some output goes out as binary and has bytes,
``application/octet-stream`` with the ``Inference-Header-Content-Length`` header (the one tritonclient reads).
An output is binary when its ``parameters.binary_data`` says so, else when the request's
``parameters.binary_data_output`` is true.

Refusals are :class:`InputError`: 400 for a malformed body (framing, JSON, fields and their types, unknown
datatype, shapes, duplicate names, buffers running past the body or bytes left over, unsupported extensions such
as shared memory or classification), 422 for a well-formed tensor whose contents disagree with its declaration
(element count, ``binary_data_size``, value types, ragged lists, out-of-range values, BOOL bytes other than 0/1).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayline.serving.errors import InputError

# OIP datatype → dtype of a decoded tensor (binary numeric data are read in exactly these little-endian dtypes).
DATATYPES: dict[str, np.dtype] = {name: np.dtype(code) for name, code in (
    ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"), ("UINT64", "<u8"),
    ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"), ("INT64", "<i8"),
    ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"), ("BF16", "<f4"), ("BYTES", "O"))}

_OUTPUT_DATATYPES = {("b", 1): "BOOL", ("u", 1): "UINT8", ("u", 2): "UINT16", ("u", 4): "UINT32", ("u", 8): "UINT64",
                     ("i", 1): "INT8", ("i", 2): "INT16", ("i", 4): "INT32", ("i", 8): "INT64",
                     ("f", 2): "FP16", ("f", 4): "FP32", ("f", 8): "FP64"}
_NUMBERS = (frozenset({int, float}), "numbers")
_JSON_VALUES = {"BOOL": (frozenset({bool}), "booleans"), "BYTES": (frozenset({str}), "strings"),
                "FP16": _NUMBERS, "FP32": _NUMBERS, "FP64": _NUMBERS}  # Python types json gives; else integers
_REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_FIELDS = frozenset({"name", "parameters"})
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_MAX_DIMS = 64  # numpy's limit
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, eq=False)
class Tensor:
    """One decoded input tensor. ``data`` has ``shape``; numeric types are numpy arrays (binary ones read-only
    views of the body; BF16 widened to float32), BYTES an object array of ``bytes``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class InferCall:
    """A parsed infer request: its inputs and how the client wants the outputs back."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[str] | None  # names requested, in order; None: every output of the model
    binary_outputs: frozenset[str]  # requested outputs to send as binary
    binary_all: bool  # request ``parameters.binary_data_output``: the default for outputs without ``binary_data``

    def binary(self, name: str) -> bool:
        """Whether output ``name`` goes out as binary data."""
        return self.binary_all if self.outputs is None else name in self.binary_outputs


def parse_infer_request(body: bytes, json_length: int | None) -> InferCall:
    """Decode an infer request body; ``json_length`` is the ``Inference-Header-Content-Length`` header's value
    (None: the whole body is JSON)."""
    if json_length is not None and not 0 <= json_length <= len(body):
        raise InputError(400, f"Inference-Header-Content-Length {json_length} is outside the body's "
                         f"{len(body)} bytes", {"header_length": json_length, "body_length": len(body)})
    header_end = len(body) if json_length is None else json_length
    request = _load_header(body[:header_end])
    _check_fields(request, _REQUEST_FIELDS, "the request", required=("inputs",))
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(400, "the request's id must be a string", {"id": request_id})
    parameters = _parameters(request, "the request")
    binary_all = _flag(parameters, "binary_data_output", "the request", default=False)
    inputs, offset, names = [], header_end, set()
    specs = request["inputs"]
    if not isinstance(specs, list) or not specs:
        raise InputError(400, "inputs must be a non-empty list", {"inputs": type(specs).__name__})
    for index, spec in enumerate(specs):
        tensor, offset = _input(spec, index, body, offset, json_length is not None)
        if tensor.name in names:
            raise InputError(400, f"input {tensor.name!r} appears twice", {"input": tensor.name})
        names.add(tensor.name)
        inputs.append(tensor)
    if offset != len(body):
        raise InputError(400, f"{len(body) - offset} bytes follow the JSON header and the inputs' binary data",
                         {"extra_bytes": len(body) - offset})
    outputs, binary_outputs = _requested_outputs(request.get("outputs"), binary_all)
    return InferCall(request_id, inputs, outputs, binary_outputs, binary_all)


def encode_infer_response(call: InferCall, model_name: str, model_version: str,
                          outputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers for the outputs ``call`` asked for (all of them when it named none)."""
    names = list(outputs) if call.outputs is None else call.outputs
    missing = [name for name in names if name not in outputs]
    if missing:
        raise InputError(400, f"model {model_name!r} has no output {missing[0]!r}",
                         {"unknown": missing, "outputs": list(outputs)})
    header: dict[str, Any] = {} if call.id is None else {"id": call.id}
    header.update(model_name=model_name, model_version=model_version, outputs=[])
    buffers = []
    for name in names:
        array = np.asarray(outputs[name])
        datatype = _output_datatype(name, array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if call.binary(name):
            raw = _bytes_data(array) if datatype == "BYTES" else array.astype(DATATYPES[datatype], copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = _json_strings(name, array) if datatype == "BYTES" else array.ravel().tolist()
        header["outputs"].append(entry)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not any(buffers):
        return encoded, {"Content-Type": "application/json"}
    return b"".join([encoded, *buffers]), {"Content-Type": "application/octet-stream",
                                           "Inference-Header-Content-Length": str(len(encoded))}


def _load_header(header: bytes) -> dict[str, Any]:
    try:
        request = json.loads(header.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(400, "the JSON header is not UTF-8", str(err)) from None
    except RecursionError:
        raise InputError(400, "the JSON header is nested too deeply", None) from None
    except ValueError as err:
        raise InputError(400, "the JSON header is not valid JSON", str(err)) from None
    if not isinstance(request, dict):
        raise InputError(400, "the JSON header must be an object", {"got": type(request).__name__})
    return request


def _check_fields(spec: dict[str, Any], allowed: frozenset[str], where: str, required: tuple[str, ...]) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(400, f"unknown field {unknown[0]!r} in {where}",
                         {"unknown": unknown, "allowed": sorted(allowed)})
    missing = [field for field in required if field not in spec]
    if missing:
        raise InputError(400, f"{where} has no {missing[0]!r}", {"missing": missing})


def _parameters(spec: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = spec.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InputError(400, f"parameters of {where} must be an object", {"parameters": parameters})
    unsupported = [key for key in (*_SHARED_MEMORY, "classification") if key in parameters]
    if unsupported:
        raise InputError(400, f"{where} asks for {unsupported[0]}, which this server does not support",
                         {"unsupported": unsupported})
    return parameters


def _flag(parameters: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InputError(400, f"parameters.{key} of {where} must be true or false", {key: value})
    return value


def _input(spec: Any, index: int, body: bytes, offset: int, framed: bool) -> tuple[Tensor, int]:
    """Input ``index`` and the offset of the next binary buffer."""
    if not isinstance(spec, dict):
        raise InputError(400, f"inputs[{index}] must be an object", {"input": index})
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(400, f"inputs[{index}] needs a non-empty string name", {"input": index, "name": name})
    where = f"input {name!r}"
    _check_fields(spec, _INPUT_FIELDS, where, required=("shape", "datatype"))
    datatype, shape = spec["datatype"], spec["shape"]
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InputError(400, f"{where} has unknown datatype {datatype!r}",
                         {"input": name, "datatype": datatype, "known": list(DATATYPES)})
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
            or not all(type(dim) is int and dim >= 0 for dim in shape)):
        raise InputError(400, f"{where}: shape must be a list of at most {_MAX_DIMS} non-negative integers",
                         {"input": name, "shape": shape})
    count = math.prod(shape)
    parameters = _parameters(spec, where)
    size = parameters.get("binary_data_size")
    if ("data" in spec) == (size is not None):
        raise InputError(400, f"{where} needs exactly one of data and parameters.binary_data_size", {"input": name})
    if size is None:
        flat = _json_data(where, datatype, count, spec["data"])
    else:
        if type(size) is not int or size < 0:
            raise InputError(400, f"{where}: binary_data_size must be a non-negative integer",
                             {"input": name, "binary_data_size": size})
        if offset + size > len(body):
            hint = "" if framed else " (no Inference-Header-Content-Length header: the body holds only JSON)"
            raise InputError(400, f"{where}: its {size} bytes of binary data run past the end of the body{hint}",
                             {"input": name, "binary_data_size": size, "bytes_left": len(body) - offset})
        flat = _binary_data(where, datatype, count, body, offset, size)
        offset += size
    return Tensor(name, datatype, tuple(shape), flat.reshape(shape)), offset


def _json_data(where: str, datatype: str, count: int, data: Any) -> np.ndarray:
    """JSON ``data`` (flat or nested) as a flat array of ``count`` elements."""
    if datatype == "BF16":
        raise InputError(400, f"{where}: BF16 data must be sent as binary", {"datatype": datatype})
    if not isinstance(data, list):
        raise InputError(400, f"{where}: data must be a JSON array", {"data": type(data).__name__})
    kinds = set(map(type, data))
    if list in kinds:  # nested rows: numpy lays a rectangular nest out row-major; ragged rows stay lists
        try:
            data = np.asarray(data, dtype=object).ravel().tolist()
        except ValueError as err:
            raise InputError(422, f"{where}: data is not a rectangular array", str(err)) from None
        kinds = set(map(type, data))
    if list in kinds:
        raise InputError(422, f"{where}: data is not a rectangular array (nested lists of different lengths)",
                         {"datatype": datatype})
    allowed, wanted = _JSON_VALUES.get(datatype, (frozenset({int}), "integers"))
    if not kinds <= allowed:
        raise InputError(422, f"{where}: {datatype} data must be {wanted}",
                         {"datatype": datatype, "found": sorted(kind.__name__ for kind in kinds - allowed)})
    if len(data) != count:
        raise InputError(422, f"{where}: data holds {len(data)} elements, shape needs {count}",
                         {"elements": len(data), "expected": count})
    if datatype == "BYTES":
        return _object_array([_utf8(where, text) for text in data])
    try:
        if datatype in ("FP16", "FP32"):
            wide = np.asarray(data, dtype=np.float64)
            with np.errstate(over="ignore"):
                values = wide.astype(DATATYPES[datatype])
            if np.any(np.isinf(values) & np.isfinite(wide)):
                raise OverflowError
            return values
        return np.asarray(data, dtype=DATATYPES[datatype])
    except OverflowError:
        raise InputError(422, f"{where}: data holds values outside the range of {datatype}",
                         {"datatype": datatype}) from None


def _utf8(where: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(422, f"{where}: a string is not valid Unicode", str(err)) from None


def _binary_data(where: str, datatype: str, count: int, body: bytes, offset: int, size: int) -> np.ndarray:
    """``size`` bytes of ``body`` from ``offset`` as a flat array of ``count`` elements."""
    if datatype == "BYTES":
        return _bytes_elements(where, memoryview(body)[offset:offset + size], count)
    wire = np.dtype("<u2") if datatype == "BF16" else DATATYPES[datatype]
    if size != count * wire.itemsize:
        raise InputError(422, f"{where}: binary_data_size is {size} bytes, {count} {datatype} elements take "
                         f"{count * wire.itemsize}", {"binary_data_size": size, "expected": count * wire.itemsize})
    if datatype == "BOOL":
        raw = np.frombuffer(body, np.uint8, count, offset)
        if np.any(raw > 1):
            raise InputError(422, f"{where}: BOOL bytes must be 0 or 1", {"datatype": datatype})
        return raw.view(np.bool_)
    values = np.frombuffer(body, wire, count, offset)
    if datatype == "BF16":  # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values


def _bytes_elements(where: str, buffer: memoryview, count: int) -> np.ndarray:
    """A BYTES buffer: ``count`` elements, each a 4-byte little-endian length and its bytes, filling it exactly."""
    if count * _LENGTH.size > len(buffer):
        raise InputError(422, f"{where}: {len(buffer)} bytes cannot hold {count} BYTES elements",
                         {"binary_data_size": len(buffer), "elements": count})
    elements, position = [], 0
    for index in range(count):
        if position == len(buffer):
            raise InputError(422, f"{where}: the BYTES buffer ends after {index} of {count} elements",
                             {"elements": index, "expected": count})
        if position + _LENGTH.size > len(buffer):
            raise InputError(400, f"{where}: the length prefix of BYTES element {index} runs past its buffer",
                             {"element": index, "bytes_left": len(buffer) - position})
        (length,) = _LENGTH.unpack_from(buffer, position)
        position += _LENGTH.size
        if position + length > len(buffer):
            raise InputError(400, f"{where}: BYTES element {index} claims {length} bytes, only "
                             f"{len(buffer) - position} are left in its buffer", {"element": index, "length": length})
        elements.append(bytes(buffer[position:position + length]))
        position += length
    if position != len(buffer):
        raise InputError(422, f"{where}: {len(buffer) - position} bytes follow the last of {count} BYTES elements",
                         {"extra_bytes": len(buffer) - position, "elements": count})
    return _object_array(elements)


def _object_array(elements: list[bytes]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array


def _requested_outputs(specs: Any, binary_all: bool) -> tuple[list[str] | None, frozenset[str]]:
    """Names of the requested outputs (None: all) and those of them to send as binary."""
    if specs is None:
        return None, frozenset()
    if not isinstance(specs, list):
        raise InputError(400, "outputs must be a list", {"outputs": type(specs).__name__})
    names: list[str] = []
    binary = set()
    for index, spec in enumerate(specs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name:
            raise InputError(400, f"outputs[{index}] must be an object with a non-empty string name", {"output": index})
        where = f"output {name!r}"
        _check_fields(spec, _OUTPUT_FIELDS, where, required=())
        if name in names:
            raise InputError(400, f"{where} is requested twice", {"output": name})
        parameters = _parameters(spec, where)
        names.append(name)
        if _flag(parameters, "binary_data", where, default=binary_all):
            binary.add(name)
    return names, frozenset(binary)


def _output_datatype(name: str, dtype: np.dtype) -> str:
    if dtype.kind in "OUS":
        return "BYTES"
    datatype = _OUTPUT_DATATYPES.get((dtype.kind, dtype.itemsize))
    if datatype is None:
        raise TypeError(f"output {name!r} has dtype {dtype}, which no OIP datatype carries")
    return datatype


def _elements(array: np.ndarray) -> list[bytes]:
    """BYTES elements, row-major: bytes as they are, anything else as its text in UTF-8 (as tritonclient does)."""
    return [value if isinstance(value, bytes) else str(value).encode("utf-8") for value in array.ravel().tolist()]


def _bytes_data(array: np.ndarray) -> bytes:
    return b"".join(part for element in _elements(array) for part in (_LENGTH.pack(len(element)), element))


def _json_strings(name: str, array: np.ndarray) -> list[str]:
    try:
        return [element.decode("utf-8") for element in _elements(array)]
    except UnicodeDecodeError:
        raise InputError(400, f"output {name!r} holds bytes that are not UTF-8: request it with "
                         "parameters.binary_data true", {"output": name}) from None
