"""Reference networks used by tests, the demo and the benchmarks.

Inputs arrive as ``(n, *input_shape)``; the dense models flatten them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from expunge.exceptions import UnsupportedModelError
from expunge.models._registry import register_model


def _n_features(input_shape: tuple[int, ...]) -> int:
    return int(math.prod(input_shape))


@register_model("logreg")
def logreg(*, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Multinomial logistic regression: flatten, then one linear layer."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_n_features(input_shape), n_classes))


@register_model("mlp")
def mlp(
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    hidden_sizes: Sequence[int] = (256,),
    dropout: float = 0.0,
) -> nn.Module:
    """Fully connected ReLU network with the given hidden sizes (default one layer of 256)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = _n_features(input_shape)
    for size in hidden_sizes:
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


@register_model("lenet")
def lenet(*, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """LeNet-5-style CNN for 1-channel square images: 28x28 (MNIST) or 8x8 (digits).

    28x28: conv5(6) - pool - conv5(16) - pool - 120 - 84 - out (LeCun et al. 1998, with
    padding 2 on the first conv and ReLU). 8x8: conv3(6, pad 1) - pool - conv3(16, pad 1)
    - pool - 120 - 84 - out, the same shape scaled to the smaller image.
    """
    n_pixels = _n_features(tuple(input_shape))
    if n_pixels not in (64, 784):
        raise UnsupportedModelError(
            f"lenet takes 1x28x28 or 1x8x8 images; got input shape {tuple(input_shape)}. "
            "Use 'mlp' or 'logreg' for other inputs."
        )
    side = 28 if n_pixels == 784 else 8
    if side == 28:  # 28 -conv5 pad2-> 28 -pool-> 14 -conv5-> 10 -pool-> 5
        conv2_pad, kernel, conv1_pad, flat_side = 0, 5, 2, 5
    else:  # 8 -conv3 pad1-> 8 -pool-> 4 -conv3 pad1-> 4 -pool-> 2
        conv2_pad, kernel, conv1_pad, flat_side = 1, 3, 1, 2
    return nn.Sequential(
        nn.Flatten(),  # accepts (n,1,s,s), (n,s,s) or (n,s*s) alike
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, 6, kernel, padding=conv1_pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel, padding=conv2_pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * flat_side * flat_side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, n_classes),
    )
