"""Optional: compare lungviz's Keras EfficientNet-Lite with the PyTorch reference, layer by layer.

Not part of the library or the tests; it documents how the port was checked.
It needs a separate throwaway environment with PyTorch and the reference
implementation (never installed into the project's venv):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch numpy
    .venv/bin/python tools/crosscheck_efficientnet_lite.py --torch-python /tmp/torchvenv/bin/python

Run from the project venv, the script feeds the same inputs (center-cropped
scikit-image photos plus uniform noise, at each variant's native resolution)
to both models and prints the largest absolute difference of the stem
output, every block output, the 1280-channel feature map and the ImageNet
probabilities. It also prints evidence for the input normalisation: how the
stem batch-norm statistics stored in the checkpoint compare with the stem
convolution outputs under (x - 127) / 128 and under ImageNet mean/std.
Under the torch interpreter (--reference) it only computes the reference side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def reference_outputs(variant: str, weights: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Intermediate outputs of efficientnet-lite-pytorch (eval mode), as NHWC numpy arrays."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(variant.replace("_", "-"))
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    captured: dict[str, np.ndarray] = {}

    def keep(name):
        return lambda _module, _inputs, output: captured.__setitem__(name, output.permute(0, 2, 3, 1).numpy())

    model._bn0.register_forward_hook(keep("stem_bn"))
    for index, block in enumerate(model._blocks):
        block.register_forward_hook(keep(f"block{index}"))
    model._bn1.register_forward_hook(keep("top_bn"))
    x = torch.from_numpy((pixels - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        captured["predictions"] = torch.softmax(model(x), dim=1).numpy()
    # ReLU6 is applied functionally after the BN hooks; apply it here to compare activations.
    for name in ("stem_bn", "top_bn"):
        captured[name] = np.clip(captured[name], 0.0, 6.0)
    return captured


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """TF EfficientNet eval crop: central size/(size+32) of the short side, bicubic resize."""
    from PIL import Image

    height, width = image.shape[:2]
    crop = int(size / (size + 32) * min(height, width))
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    patch = Image.fromarray(image[top : top + crop, left : left + crop])
    return np.asarray(patch.resize((size, size), Image.BICUBIC), np.float32)


def compare(variant: str, torch_python: str) -> None:
    import keras
    import skimage.data

    from lungviz.models.backbones import efficientnet_lite as lite

    size = lite.VARIANTS[variant].resolution
    rng = np.random.default_rng(0)
    pixels = np.stack(
        [center_crop(getattr(skimage.data, n)(), size) for n in PHOTOS]
        + [rng.uniform(0, 255, (size, size, 3)).astype(np.float32)]
    )
    weights = lite.imagenet_weights_path(variant)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "pixels.npy", pixels)
        subprocess.run([torch_python, __file__, "--reference", variant, str(weights), tmp], check=True)
        reference = dict(np.load(Path(tmp) / "reference.npz"))

    model = lite.build_efficientnet_lite(variant, (size, size, 3), include_top=True)
    blocks = lite.block_names(model)
    block_outputs = [[layer for layer in model.layers if layer.name.startswith(f"{b}_")][-1].output for b in blocks]
    names = ["stem_bn", *(f"block{i}" for i in range(len(blocks))), "top_bn", "predictions"]
    tensors = [
        model.get_layer("stem_activation").output,
        *block_outputs,
        model.get_layer(lite.CAM_LAYER).output,
        model.output,
    ]
    ours = keras.Model(model.input, tensors).predict(pixels, verbose=0)
    print(f"{variant} ({size}x{size}, {len(blocks)} blocks): max |keras - torch|")
    for name, value in zip(names, ours, strict=False):
        scale = np.abs(reference[name]).max()
        print(f"  {name:12s} {np.abs(value - reference[name]).max():.3g}   (max |torch| {scale:.3g})")
    top_ours = np.argsort(-ours[-1], axis=1)[:, :5]
    top_ref = np.argsort(-reference["predictions"], axis=1)[:, :5]
    print("  top-5 identical for all inputs:", bool((top_ours == top_ref).all()))
    for name, top, probs in zip(PHOTOS, top_ours, ours[-1], strict=False):
        print(f"  {name:10s} top-5 {top.tolist()} p=[{', '.join(f'{q:.3f}' for q in probs[top])}]")
    normalisation_evidence(model, pixels[: len(PHOTOS)])


def normalisation_evidence(model, photos: np.ndarray) -> None:
    """Stem conv output statistics under each candidate normalisation vs the checkpoint's BN running stats."""
    import keras

    kernel = model.get_layer("stem_conv").get_weights()[0]
    *_, moving_var = model.get_layer("stem_bn").get_weights()
    conv = keras.Sequential(
        [keras.Input(photos.shape[1:]), keras.layers.Conv2D(kernel.shape[-1], 3, 2, "same", use_bias=False)]
    )
    conv.layers[0].set_weights([kernel])
    for label, normalised in (
        ("(x-127)/128", (photos - 127.0) / 128.0),
        ("ImageNet mean/std", (photos - IMAGENET_MEAN) / IMAGENET_STD),
    ):
        out = conv.predict(normalised, verbose=0).reshape(-1, kernel.shape[-1])
        alive = moving_var > 0  # some stem channels are dead (zero running variance)
        ratio = out.var(axis=0)[alive] / moving_var[alive]
        print(f"  stem variance / BN running variance under {label}: median {np.median(ratio):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", help="python of a venv with torch and efficientnet-lite-pytorch")
    parser.add_argument("--variants", nargs="+", default=None, help="default: all EfficientNet-Lite variants")
    parser.add_argument("--reference", nargs=3, metavar=("VARIANT", "WEIGHTS", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        variant, weights, folder = args.reference
        outputs = reference_outputs(variant, weights, np.load(Path(folder) / "pixels.npy"))
        np.savez(Path(folder) / "reference.npz", **outputs)
        return
    if not args.torch_python:
        parser.error("--torch-python is required")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lungviz.models.backbones.efficientnet_lite import VARIANTS

    for variant in args.variants or VARIANTS:
        compare(variant, args.torch_python)


if __name__ == "__main__":
    main()
