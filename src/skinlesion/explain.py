"""Class-activation heat maps (the ``grad-cam`` package) over the model's input.

The method and layer were chosen by a test (``tests/test_explain.py``) on synthetic lesions whose
class evidence lies only inside the lesion: LayerCAM with eigen-smoothing at the last convolution
still at least 4 pixels wide puts about 0.7 of the map's mass inside the lesion (19 % of the image);
plain Grad-CAM there 0.32, Grad-CAM++ 0.57, Score-CAM 0.65 (and 0.0 on its worst image).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def target_layer(net, input_size: int, min_side: int = 4):
    """Where Grad-CAM looks: the last convolution whose output is still at least ``min_side`` pixels wide.

    The very last convolution of a backbone is 1x1 or 2x2 on small inputs (28-64 px), which makes a
    useless, uniform map; an earlier, finer layer keeps the map informative.
    """
    import torch

    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError("this backbone has no convolution for Grad-CAM")
    sides = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: sides.__setitem__(mod, min(o.shape[-2:]))) for m in convs]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    wide = [m for m in convs if sides.get(m, 0) >= min_side]
    return wide[-1] if wide else convs[-1]


METHOD = "LayerCAM with eigen-smoothing"  # what the app's caption names


def gradcam(net, prep, image: Image.Image, target: int | None = None) -> np.ndarray:
    """Heat map in [0, 1], shape (input_size, input_size), for class ``target`` (default: the top class)."""
    import torch
    from pytorch_grad_cam import LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.from_numpy(prep.batch([image]))
    net = net.eval()
    with LayerCAM(model=net, target_layers=[target_layer(net, prep.input_size)]) as cam:
        targets = None if target is None else [ClassifierOutputTarget(int(target))]
        plain = np.nan_to_num(cam(input_tensor=x, targets=targets)[0])
        heat = np.nan_to_num(cam(input_tensor=x, targets=targets, eigen_smooth=True)[0])
    # the principal component's sign is arbitrary: a smoothed map that disagrees with the plain one
    # points at the complement of the evidence, so the plain map is kept then
    if plain.std() > 0 and (heat.std() == 0 or np.corrcoef(plain.ravel(), heat.ravel())[0, 1] < 0):
        heat = plain
    return (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)


COLOURMAP = "jet"  # the overlay's and the legend's colours


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heat map coloured (jet) and blended over ``image`` at the image's own size."""
    from matplotlib import colormaps

    h = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    coloured = (colormaps[COLOURMAP](np.asarray(h) / 255.0)[..., :3] * 255).astype(np.uint8)
    return Image.blend(image.convert("RGB"), Image.fromarray(coloured), alpha)


def colour_scale(width: int = 320, height: int = 36) -> Image.Image:
    """The legend of :func:`overlay`'s colours: a bar from 0 (least evidence, left) to 1 (most, right), labelled."""
    from matplotlib import colormaps
    from PIL import ImageDraw

    bar = colormaps[COLOURMAP](np.linspace(0, 1, width))[None, :, :3]
    img = Image.new("RGB", (width, height), "white")
    img.paste(Image.fromarray((np.repeat(bar, height // 2, axis=0) * 255).astype(np.uint8)), (0, 0))
    d = ImageDraw.Draw(img)
    d.text((2, height // 2 + 2), "0: least evidence", fill="black")
    label = "most evidence: 1"
    d.text((width - 6 * len(label) - 2, height // 2 + 2), label, fill="black")
    return img
