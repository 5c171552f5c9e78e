"""A small U-Net that labels each pixel of a DAPI patch with one of the four ecSeg classes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetConfig:
    """Shape of the U-Net.

    The input is first rearranged into ``unshuffle ** 2`` channels at
    ``1 / unshuffle`` of its side (space-to-depth), and the logits are
    rearranged back at the end. For ``unshuffle == 2`` the convolutions thus
    run on a quarter of the pixels, and every input pixel still gets its own
    label. ``base_channels`` feature maps at the first level are doubled at
    each of the ``depth - 1`` downsamplings, so the input side must be a
    multiple of :attr:`size_multiple` pixels.
    """

    in_channels: int = 1
    num_classes: int = 4
    base_channels: int = 16
    depth: int = 5
    unshuffle: int = 2

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def size_multiple(self) -> int:
        return self.unshuffle * 2 ** (self.depth - 1)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections, max pooling down and bilinear upsampling up.

    Input is ``(B, in_channels, H, W)`` float in [0, 1] with ``H`` and ``W``
    multiples of ``config.size_multiple``. Output is ``(B, num_classes, H, W)``
    logits.
    """

    def __init__(self, config: NetConfig | None = None):
        super().__init__()
        self.config = config or NetConfig()
        widths = [self.config.base_channels * 2**level for level in range(self.config.depth)]
        self.encoders = nn.ModuleList()
        in_channels = self.config.in_channels * self.config.unshuffle**2
        for width in widths:
            self.encoders.append(_double_conv(in_channels, width))
            in_channels = width
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.decoders.append(_double_conv(in_channels + width, width))
            in_channels = width
        self.head = nn.Conv2d(in_channels, self.config.num_classes * self.config.unshuffle**2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(x, self.config.unshuffle)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for decoder in self.decoders:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = decoder(torch.cat([x, skip], dim=1))
        return F.pixel_shuffle(self.head(x), self.config.unshuffle)


def count_parameters(net: nn.Module) -> int:
    """Return the number of trainable parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
