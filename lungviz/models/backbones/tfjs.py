"""Read TensorFlow.js layers models shipped as JavaScript files, without running any JavaScript.

A TF.js layers model is a `model.json` (the Keras topology and a weights
manifest) plus binary weight shards. npm packages such as nsfwjs bundle both
as browserify scripts so that `require` can load them: `model.min.js` sets
`module.exports` to the model.json content written as a JavaScript object
literal (unquoted keys, `!0`/`!1` for true/false, `.5`-style numbers), and each
shard `<path>.min.js` sets it to the shard's bytes as one base64 string.

This module finds that single `exports=` assignment and reads the value with
`parse_js_literal`, a parser for literal data only (objects, arrays, strings,
numbers, true/false/null): a function call, a variable or an operator is an
error, never evaluated. Weights are then cut from the concatenated shards in
manifest order and dequantised the way TF.js does it: affine-quantised tensors
(`quantization: {dtype: "uint8" | "uint16", min, scale}`) become
`min + q * scale` as float32.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungviz.errors import CheckpointError

SCRIPT_SUFFIX = ".min.js"
"""Suffix of the browserify-wrapped files: `model.min.js` and `<shard path>.min.js`."""

QUANTIZED_DTYPES: dict[str, np.dtype] = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2")}
RAW_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<punct>[{}\[\]:,])
    | (?P<string>"[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*')
    | (?P<number>[+-]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|Infinity))
    | (?P<bool>![01])
    | (?P<void>void\s+0\b)
    | (?P<word>[A-Za-z_$][\w$]*)
    )""",
    re.VERBOSE | re.DOTALL,
)
_WORDS: dict[str, Any] = {"true": True, "false": False, "null": None, "undefined": None, "NaN": math.nan}
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u\{([0-9a-fA-F]{1,6})\}|u([0-9a-fA-F]{4})|(\r\n|[\s\S]))")
_EXPORTS = re.compile(r"\.exports\s*=\s*(?=[{\"'])")


def _unescape(body: str) -> str:
    """A JS string literal's text with its escapes resolved (surrogate pairs joined)."""
    if "\\" not in body:
        return body

    def replace(match: re.Match[str]) -> str:
        hex2, braced, hex4, other = match.groups()
        if other is None:
            return chr(int(hex2 or braced or hex4, 16))
        if other in ("\n", "\r", "\r\n", "\u2028", "\u2029"):  # line continuation
            return ""
        return _SIMPLE_ESCAPES.get(other, other)

    text = _ESCAPE.sub(replace, body)
    return text.encode("utf-16", "surrogatepass").decode("utf-16")


def _number(token: str) -> int | float:
    sign = -1 if token.startswith("-") else 1
    digits = token.lstrip("+-")
    if digits == "Infinity":
        return sign * math.inf
    if digits[:2] in ("0x", "0X"):
        return sign * int(digits, 16)
    return int(token) if digits.isdigit() else float(token)


class _Parser:
    """Recursive descent over `_TOKEN`s; every value must be literal data."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source

    def fail(self, position: int, expected: str) -> CheckpointError:
        snippet = self.text[position : position + 30].strip()
        return CheckpointError(f"{self.source}: expected {expected} at offset {position}, found {snippet!r}")

    def token(self, position: int) -> tuple[str, str, int]:
        """(kind, text, end) of the token at `position`, after any whitespace."""
        match = _TOKEN.match(self.text, position)
        if match is None or match.lastgroup is None:
            raise self.fail(position, "a JavaScript literal")
        return match.lastgroup, match.group(match.lastgroup), match.end()

    def value(self, position: int) -> tuple[Any, int]:
        kind, text, end = self.token(position)
        if kind == "string":
            return _unescape(text[1:-1]), end
        if kind == "number":
            return _number(text), end
        if kind == "bool":
            return text == "!0", end
        if kind == "void":
            return None, end
        if kind == "word" and text in _WORDS:
            return _WORDS[text], end
        if kind == "punct" and text == "{":
            return self.members(end)
        if kind == "punct" and text == "[":
            return self.elements(end)
        raise self.fail(position, "a literal value (code is never evaluated)")

    def elements(self, position: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        while True:
            kind, text, end = self.token(position)
            if text == "]" and kind == "punct":
                return items, end
            item, position = self.value(position)
            items.append(item)
            kind, text, end = self.token(position)
            if kind != "punct" or text not in ",]":
                raise self.fail(position, "',' or ']'")
            position = end if text == "," else position

    def members(self, position: int) -> tuple[dict[str, Any], int]:
        members: dict[str, Any] = {}
        while True:
            kind, text, end = self.token(position)
            if text == "}" and kind == "punct":
                return members, end
            if kind == "string":
                key = _unescape(text[1:-1])
            elif kind in ("word", "number"):
                key = text
            else:
                raise self.fail(position, "a property name")
            kind, text, position = self.token(end)
            if text != ":":
                raise self.fail(end, "':'")
            members[key], position = self.value(position)
            kind, text, end = self.token(position)
            if kind != "punct" or text not in ",}":
                raise self.fail(position, "',' or '}'")
            position = end if text == "," else position


def parse_js_literal(text: str, start: int = 0, source: str = "literal") -> tuple[Any, int]:
    """The JavaScript literal value starting at `start` and the offset just after it.

    Objects become dicts (keys as written, quoted or not), arrays lists,
    `!0`/`!1` True/False, `null`/`undefined`/`void 0` None. Anything that is
    not literal data (a call, a variable, an operator) raises CheckpointError.
    """
    return _Parser(text, source).value(start)


def module_export(path: Path) -> Any:
    """The value a browserify-wrapped data file assigns to `module.exports` (exactly one assignment)."""
    text = path.read_text(encoding="utf-8")
    assignments = list(_EXPORTS.finditer(text))
    if len(assignments) != 1:
        raise CheckpointError(f"{path.name}: expected one `exports = <literal>` assignment, found {len(assignments)}")
    value, _ = parse_js_literal(text, assignments[0].end(), path.name)
    return value


@dataclass(frozen=True)
class TfjsLayer:
    """One layer of the Keras topology: its Keras 2 class name, config and the layers feeding it."""

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: tuple[str, ...]


@dataclass(frozen=True)
class TfjsModel:
    """A TF.js layers model read from its files: layers in topology order and float weights by name."""

    layers: tuple[TfjsLayer, ...]
    outputs: tuple[str, ...]
    weights: dict[str, np.ndarray]


def dequantize(raw: bytes, spec: dict[str, Any], source: str = "weights") -> np.ndarray:
    """One tensor from its bytes and manifest entry: affine uint8/uint16 -> float32, or raw float32/int32.

    Computed like TF.js (`q * scale + min` in double precision, stored as float32).
    """
    name, shape = spec.get("name"), tuple(spec.get("shape", ()))
    quantization = spec.get("quantization")
    if quantization is None:
        dtype = RAW_DTYPES.get(spec.get("dtype", ""))
        if dtype is None:
            raise CheckpointError(f"{source}: tensor {name!r} has unsupported dtype {spec.get('dtype')!r}")
        return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    quantized = QUANTIZED_DTYPES.get(quantization.get("dtype", ""))
    if quantized is None or spec.get("dtype") != "float32" or not {"min", "scale"} <= set(quantization):
        raise CheckpointError(f"{source}: tensor {name!r} uses unsupported quantization {quantization!r}")
    codes = np.frombuffer(raw, quantized).astype(np.float64)
    return (codes * quantization["scale"] + quantization["min"]).astype(np.float32).reshape(shape)


def _byte_size(spec: dict[str, Any]) -> int:
    quantization = spec.get("quantization")
    dtype = (
        QUANTIZED_DTYPES.get(quantization.get("dtype", "")) if quantization else RAW_DTYPES.get(spec.get("dtype", ""))
    )
    return math.prod(spec.get("shape", ())) * (dtype.itemsize if dtype is not None else 0)


def _shard_bytes(directory: Path, shard: str) -> bytes:
    path = directory / f"{shard}{SCRIPT_SUFFIX}"
    if not path.is_file():
        raise CheckpointError(f"weight shard {path} is missing")
    encoded = module_export(path)
    if not isinstance(encoded, str):
        raise CheckpointError(f"{path.name} does not hold a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise CheckpointError(f"{path.name} is not valid base64: {error}") from None


def _read_group(directory: Path, group: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tensors of one manifest group: its shards concatenated, cut in manifest order."""
    data = b"".join(_shard_bytes(directory, shard) for shard in group["paths"])
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for spec in group["weights"]:
        size = _byte_size(spec)
        if offset + size > len(data):
            raise CheckpointError(f"{directory.name}: the shards end inside tensor {spec['name']!r}")
        tensors[spec["name"]] = dequantize(data[offset : offset + size], spec, directory.name)
        offset += size
    if offset != len(data):
        raise CheckpointError(f"{directory.name}: {len(data) - offset} bytes of the shards belong to no tensor")
    return tensors


def _inbound(layer: dict[str, Any]) -> tuple[str, ...]:
    """Names of the layers feeding a Keras 2 layer config (its first call: [[name, node, tensor, kwargs], ...])."""
    nodes = layer.get("inbound_nodes") or [[]]
    return tuple(entry[0] for entry in nodes[0])


def read_layers_model(model_file: Path) -> TfjsModel:
    """The topology and dequantised weights of a browserified TF.js layers model (`.../model.min.js`)."""
    if not model_file.is_file():
        raise CheckpointError(f"TF.js model file {model_file} is missing")
    content = module_export(model_file)
    try:
        config = content["modelTopology"]["model_config"]["config"]
        layers = tuple(
            TfjsLayer(layer["name"], layer["class_name"], layer["config"], _inbound(layer))
            for layer in config["layers"]
        )
        outputs = tuple(output[0] for output in config["output_layers"])
        groups = content["weightsManifest"]
    except (KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"{model_file.name} is not a TF.js layers model ({error!r} missing)") from None
    weights: dict[str, np.ndarray] = {}
    for group in groups:
        weights.update(_read_group(model_file.parent, group))
    return TfjsModel(layers, outputs, weights)
