"""A model seen as one flat graph: input -> (CAM layer features, logits), sharing the model's weights.

The layers of any nested base model are re-wired into one graph, using the
same layer objects and therefore the same weights, with the CAM layer's output
exposed next to the logits (the final layer before its softmax/sigmoid). This
is what makes CAMs work for transfer-learning models whose CAM layer lives
inside a base model, which tf-keras-vis cannot do on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from lungviz.errors import ExplanationError

FEATURES_LAYER = "lungviz_cam_features"
"""Name of the pass-through layer that marks the CAM layer's output in a `CamGraph`."""


@dataclass(frozen=True)
class CamGraph:
    """A model seen as input -> (CAM layer features, logits), sharing the model's weights."""

    model: keras.Model
    """Outputs [features (batch, h, w, channels), logits (batch, units)]."""
    head: str
    """"softmax" or "sigmoid": how logits become probabilities."""
    n_classes: int

    @classmethod
    def build(cls, model: keras.Model, cam_layer: str) -> CamGraph:
        """Re-wire `model` so the CAM layer's output and the logits are outputs of one graph."""
        if len(model.inputs) != 1:
            raise ExplanationError(f"model {model.name!r} has {len(model.inputs)} inputs; expected one image input")
        target = find_layer(model, cam_layer)
        if target is None:
            raise ExplanationError(
                f"model {model.name!r} has no layer named {cam_layer!r} (not even in a nested model)"
            )
        final = _output_layer(model)
        head = _head_of(final)
        found: dict[str, keras.KerasTensor] = {}

        def call(layer, *args, **kwargs):
            if isinstance(layer, keras.Model) and (_contains(layer, target) or _contains(layer, final)):
                return _rewire(layer, args[0], call)
            outputs = layer(*args, **kwargs)
            if layer is target:
                outputs = found["features"] = keras.layers.Identity(name=FEATURES_LAYER)(outputs)
            if layer is final:
                found["logits"] = _logits(layer, args[0], outputs)
            return outputs

        source = model.inputs[0]
        inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype, name="image")
        _rewire(model, inputs, call)
        features, logits = found["features"], found["logits"]
        if len(features.shape) != 4:
            raise ExplanationError(
                f"CAM layer {cam_layer!r} outputs shape {tuple(features.shape)}; "
                "a CAM needs a (batch, height, width, channels) feature map"
            )
        units = logits.shape[-1]
        if head == "sigmoid" and units != 1:
            raise ExplanationError(f"a sigmoid head must have one unit, {final.name!r} has {units}")
        flat = keras.Model(inputs, [features, logits], name=f"{model.name}_cam_graph")
        return cls(model=flat, head=head, n_classes=2 if head == "sigmoid" else units)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return tuple(self.model.inputs[0].shape)

    def probabilities(self, logits):
        """Class probabilities from the graph's logits (a tensor); a sigmoid unit z gives [1 - p, p]."""
        if self.head == "sigmoid":
            positive = keras.ops.sigmoid(logits)
            return keras.ops.concatenate([1.0 - positive, positive], axis=-1)
        return keras.ops.softmax(logits, axis=-1)

    def logits_model(self) -> keras.Model:
        """Input -> logits, with the features layer at the top level (what tf-keras-vis can find)."""
        return keras.Model(self.model.inputs, self.model.outputs[1])


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer | None:
    """The layer called `name`, also inside nested sub-models (where transfer models keep their CAM layers)."""
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model) and (inner := find_layer(layer, name)) is not None:
            return inner
    return None


def cam_resolution(model: keras.Model, cam_layer: str) -> list[int]:
    """[height, width] of the CAM layer's feature map."""
    layer = find_layer(model, cam_layer)
    if layer is None:
        raise ExplanationError(f"the model has no layer {cam_layer!r}")
    return [int(layer.output.shape[1]), int(layer.output.shape[2])]


def _contains(model: keras.Model, wanted: keras.layers.Layer) -> bool:
    return any(
        layer is wanted or (isinstance(layer, keras.Model) and _contains(layer, wanted)) for layer in model.layers
    )


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces the class output, looking inside a nested model that ends the graph."""
    if len(model.outputs) != 1:
        raise ExplanationError(f"model {model.name!r} has {len(model.outputs)} outputs; expected one class output")
    last = model.layers[-1]
    return _output_layer(last) if isinstance(last, keras.Model) else last


def _activation_name(layer: keras.layers.Layer) -> str:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def _head_of(final: keras.layers.Layer) -> str:
    activation = _activation_name(final)
    if activation == "linear":  # the model already outputs logits
        return "sigmoid" if final.output.shape[-1] == 1 else "softmax"
    if activation not in ("softmax", "sigmoid"):
        raise ExplanationError(f"final layer {final.name!r} ends in {activation!r}; expected softmax or sigmoid")
    return activation


class _DenseLogits(keras.layers.Layer):
    """A Dense layer's output before its activation, from that layer's own kernel and bias (no copy)."""

    def __init__(self, dense: keras.layers.Dense) -> None:
        super().__init__(name=f"{dense.name}_logits")
        self.dense = dense

    def call(self, inputs):
        logits = keras.ops.matmul(inputs, self.dense.kernel)
        return logits + self.dense.bias if self.dense.use_bias else logits


def _logits(final: keras.layers.Layer, inputs, outputs):
    """Pre-activation logits of the final layer, without changing the shared model."""
    if _activation_name(final) == "linear":
        return outputs
    if isinstance(final, (keras.layers.Activation, keras.layers.Softmax)):
        return inputs
    if isinstance(final, keras.layers.Dense):
        return _DenseLogits(final)(inputs)
    raise ExplanationError(
        f"cannot read logits before the activation of final layer {final.name!r} "
        f"({type(final).__name__}); expected Dense or Activation"
    )


def _rewire(model: keras.Model, inputs, call):
    """Run `model`'s graph on `inputs` layer by layer through `call`, reusing its layers."""
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call(layer, x)
        return x
    # Run the graph symbolically without building a Functional per nested model: building one on an
    # intermediate tensor (a base model called after a Rescaling layer) fails in Keras 3, and only the
    # one flat model at the end needs to exist.
    if not hasattr(model, "_run_through_graph"):
        raise ExplanationError(
            f"cannot look inside model {model.name!r} ({type(model).__name__}); "
            "CAMs need Functional or Sequential models"
        )
    try:
        outputs = model._run_through_graph(inputs, operation_fn=lambda layer: layer, call_fn=call)
    except ValueError as error:
        raise ExplanationError(f"cannot look inside model {model.name!r} ({type(model).__name__}): {error}") from error
    return outputs[0] if isinstance(outputs, list | tuple) else outputs
