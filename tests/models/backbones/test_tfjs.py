"""The TF.js reader: JavaScript literals parsed as data, hand-written browserified models, nsfwjs's real files."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lungviz.errors import ArchitectureError, CheckpointError
from lungviz.models.backbones import nsfwjs
from lungviz.models.backbones.tfjs import dequantize, module_export, parse_js_literal, read_layers_model

# The browserify wrapper nsfwjs puts around each file (abridged); its UMD header assigns module.exports too.
UMD_HEAD = (
    '!function(e){if("object"==typeof exports&&"undefined"!=typeof module)module.exports=e();'
    'else{("undefined"!=typeof window?window:this).model=e()}}(function(){return function e(a,n,i){'
    "return n}({1:[function(e,a,n){a.exports="
)
UMD_TAIL = "},{}]},{},[1])(1)});"


def to_js(value: Any) -> str:
    """`value` written the way a minifier writes it: bare keys, !0/!1, numbers without a leading zero."""
    if isinstance(value, bool):
        return "!0" if value else "!1"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value).replace("0.", ".", 1) if abs(value) < 1 else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ",".join(to_js(item) for item in value) + "]"
    return "{" + ",".join(f"{key}:{to_js(item)}" for key, item in value.items()) + "}"


def write_script(path: Path, value: Any) -> Path:
    path.write_text(UMD_HEAD + to_js(value) + UMD_TAIL, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{a:1,"b c":[!0,!1,null],_d$:.5}', {"a": 1, "b c": [True, False, None], "_d$": 0.5}),
        (
            "{min:-.87334511607301,scale:1963169733975448e-20}",
            {"min": -0.87334511607301, "scale": 1.963169733975448e-5},
        ),
        ("[1,2.,-0,0x1F,+3,]", [1, 2.0, 0, 31, 3]),
        ("{1:void 0,u:undefined,t:true,f:false}", {"1": None, "u": None, "t": True, "f": False}),
        ("'it\\'s \\\"q\\\" \\t\\x41\\u00e9\\u{1F600}\\ud83d\\ude00\\\\'", 'it\'s "q" \tAé😀😀\\'),
        (" \n { a : [ ] , b : { } } ", {"a": [], "b": {}}),
    ],
)
def test_js_literals_parse_as_data(text, expected):
    value, end = parse_js_literal(text)
    assert value == expected
    assert text[end:].strip() == ""


def test_infinities_and_nan_are_floats():
    value, _ = parse_js_literal("[Infinity,-Infinity,NaN]")
    assert value[:2] == [math.inf, -math.inf]
    assert math.isnan(value[2])


def test_parsing_stops_after_the_value():
    text = "a.exports={k:[1]},{}]"
    value, end = parse_js_literal(text, len("a.exports="))
    assert value == {"k": [1]}
    assert text[end:] == ",{}]"


@pytest.mark.parametrize(
    "text",
    [
        "{a:b}",  # a variable
        "{a:f()}",  # a call
        "{a:1+2}",  # an operator
        "(function(){return 1})()",
        "[1 2]",
        "[,1]",
        "{a:'unterminated}",
        "{a 1}",
        "{[a]:1}",
        "",
    ],
)
def test_code_and_malformed_literals_are_refused(text):
    with pytest.raises(CheckpointError, match="expected"):
        parse_js_literal(text, source="evil.js")


def test_exports_must_be_assigned_exactly_once(tmp_path):
    twice = tmp_path / "twice.min.js"
    twice.write_text('a.exports={x:1};b.exports="AAAA"', encoding="utf-8")
    with pytest.raises(CheckpointError, match="found 2"):
        module_export(twice)
    assert module_export(write_script(tmp_path / "once.min.js", {"x": [1, 2]})) == {"x": [1, 2]}


# --------------------------------------------------------------------------- a hand-written model

# Known float values on exactly representable grids, so dequantisation must reproduce them bit for bit.
KERNEL = np.array([[-1.5, -1.4375], [0.0, 14.4375], [2.25, 3.0]], dtype=np.float32)  # min -1.5, step 1/16
BIAS = np.array([0.1, -2.5e-7, 3.0e8], dtype=np.float32)  # stored as raw float32
DENSE = np.array([[-0.25, 0.0, 4095.6875]], dtype=np.float32)  # min -0.25, step 1/16, needs uint16
COUNTS = np.array([-3, 7], dtype=np.int32)  # stored as raw int32


def _manifest() -> list[dict[str, Any]]:
    return [
        {
            "paths": ["group1-shard1of2", "group1-shard2of2"],
            "weights": [
                {
                    "name": "conv/kernel",
                    "shape": [3, 2],
                    "dtype": "float32",
                    "quantization": {"min": -1.5, "scale": 0.0625, "dtype": "uint8"},
                },
                {"name": "conv/bias", "shape": [3], "dtype": "float32"},
                {
                    "name": "dense/kernel",
                    "shape": [1, 3],
                    "dtype": "float32",
                    "quantization": {"min": -0.25, "scale": 0.0625, "dtype": "uint16"},
                },
            ],
        },
        {"paths": ["group2-shard1of1"], "weights": [{"name": "counts", "shape": [2], "dtype": "int32"}]},
    ]


def _group_bytes() -> tuple[bytes, bytes]:
    kernel_codes = np.round((KERNEL.astype(np.float64) + 1.5) * 16).astype(np.uint8)
    dense_codes = np.round((DENSE.astype(np.float64) + 0.25) * 16).astype("<u2")
    return kernel_codes.tobytes() + BIAS.astype("<f4").tobytes() + dense_codes.tobytes(), COUNTS.astype("<i4").tobytes()


def write_model(folder: Path, manifest: list[dict[str, Any]] | None = None, first_group: bytes | None = None) -> Path:
    """A browserified TF.js layers model in `folder`; the first group's bytes are split mid-tensor over two shards."""
    folder.mkdir(exist_ok=True)
    group1, group2 = _group_bytes()
    group1 = group1 if first_group is None else first_group
    topology = {
        "keras_version": "2.2.4",
        "model_config": {
            "class_name": "Model",
            "config": {
                "name": "tiny",
                "layers": [
                    {"name": "input_1", "class_name": "InputLayer", "config": {"sparse": False}, "inbound_nodes": []},
                    {
                        "name": "conv",
                        "class_name": "Dense",
                        "config": {"units": 2},
                        "inbound_nodes": [[["input_1", 0, 0, {}]]],
                    },
                    {
                        "name": "dense",
                        "class_name": "Dense",
                        "config": {"units": 3},
                        "inbound_nodes": [[["conv", 0, 0, {}]]],
                    },
                ],
                "input_layers": [["input_1", 0, 0]],
                "output_layers": [["dense", 0, 0]],
            },
        },
    }
    write_script(folder / "model.min.js", {"modelTopology": topology, "weightsManifest": manifest or _manifest()})
    for name, data in (
        ("group1-shard1of2", group1[:4]),
        ("group1-shard2of2", group1[4:]),
        ("group2-shard1of1", group2),
    ):
        write_script(folder / f"{name}.min.js", base64.b64encode(data).decode("ascii"))
    return folder / "model.min.js"


def test_reads_topology_and_dequantises_to_the_known_values(tmp_path):
    model = read_layers_model(write_model(tmp_path / "tiny"))

    assert [(layer.name, layer.class_name, layer.inbound) for layer in model.layers] == [
        ("input_1", "InputLayer", ()),
        ("conv", "Dense", ("input_1",)),
        ("dense", "Dense", ("conv",)),
    ]
    assert model.layers[1].config == {"units": 2}
    assert model.outputs == ("dense",)
    assert sorted(model.weights) == ["conv/bias", "conv/kernel", "counts", "dense/kernel"]
    for name, known in [("conv/kernel", KERNEL), ("conv/bias", BIAS), ("dense/kernel", DENSE), ("counts", COUNTS)]:
        assert model.weights[name].dtype == known.dtype
        np.testing.assert_array_equal(model.weights[name], known)
    model.weights["conv/kernel"][0, 0] = 9  # writable copies, not views of the decoded bytes


def test_dequantisation_is_min_plus_code_times_scale():
    spec = {
        "name": "w",
        "shape": [2, 2],
        "dtype": "float32",
        "quantization": {"min": -1.0, "scale": 0.5, "dtype": "uint8"},
    }
    np.testing.assert_array_equal(dequantize(bytes([0, 1, 2, 255]), spec), [[-1.0, -0.5], [0.0, 126.5]])


@pytest.mark.parametrize(
    ("quantization", "dtype"),
    [({"dtype": "float16"}, "float32"), ({"min": 0, "scale": 1, "dtype": "uint8"}, "int32"), (None, "complex64")],
)
def test_unsupported_tensor_encodings_are_refused(quantization, dtype):
    spec = {"name": "w", "shape": [1], "dtype": dtype, "quantization": quantization}
    with pytest.raises(CheckpointError, match="unsupported"):
        dequantize(b"\0\0\0\0", spec)


@pytest.mark.parametrize(("cut", "message"), [(-1, "end inside"), (None, "belong to no tensor")])
def test_shards_that_do_not_fit_the_manifest_are_refused(tmp_path, cut, message):
    group1, _ = _group_bytes()
    data = group1[:cut] if cut else group1 + b"\0\0"
    with pytest.raises(CheckpointError, match=message):
        read_layers_model(write_model(tmp_path / "bad", first_group=data))


def test_missing_shard_and_bad_base64_are_named(tmp_path):
    model_file = write_model(tmp_path / "m")
    (tmp_path / "m" / "group2-shard1of1.min.js").unlink()
    with pytest.raises(CheckpointError, match=r"group2-shard1of1\.min\.js is missing"):
        read_layers_model(model_file)
    write_script(tmp_path / "m" / "group2-shard1of1.min.js", "not base64!")
    with pytest.raises(CheckpointError, match="not valid base64"):
        read_layers_model(model_file)


def test_a_file_that_is_not_a_layers_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"not a TF\.js layers model"):
        read_layers_model(write_script(tmp_path / "model.min.js", {"format": "graph-model"}))
    with pytest.raises(CheckpointError, match="missing"):
        read_layers_model(tmp_path / "absent.min.js")


# --------------------------------------------------------------------------- the real nsfwjs files


def _installed_model_file(variant: str) -> Path:
    try:
        return nsfwjs.model_file(variant)
    except ArchitectureError as error:
        pytest.skip(f"nsfwjs package not available: {error}")


@pytest.mark.parametrize("variant", sorted(nsfwjs.VARIANTS))
def test_nsfwjs_tensors_follow_their_own_quantisation_metadata(variant):
    model_file = _installed_model_file(variant)
    manifest = [spec for group in module_export(model_file)["weightsManifest"] for spec in group["weights"]]

    weights = read_layers_model(model_file).weights

    assert len(weights) == len(manifest)
    for spec in manifest:
        values, quantization = weights[spec["name"]], spec["quantization"]
        assert quantization["dtype"] == "uint8"
        assert values.shape == tuple(spec["shape"])
        assert values.dtype == np.float32
        codes = (values.astype(np.float64) - quantization["min"]) / quantization["scale"]
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3, err_msg=spec["name"])
        # The exporter spreads every tensor over the full code range: its min is code 0, its max code 255.
        assert values.min() == np.float32(quantization["min"])
        assert np.round(codes.max()) == 255
