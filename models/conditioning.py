"""Class conditioning (this project's addition, not the paper's; docs/method.md §10): a learned
embedding per training category, added to the step embedding, so that one multi-class network
knows which part it is looking at.

The network itself stays the paper's (models/unet.py, its released state-dict layout untouched):
`ClassConditionedUNet` holds it beside an `nn.Embedding` of one row per category, initialised to
zero (so training starts from the unconditioned network). The categories and their rows travel
beside the released-format weights in a side file (models/checkpoint.py save_class_embedding),
so ``*_model.pkl`` still loads in the original's code and in this project's importer.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.unet import TransFusionUNet


class ClassConditionedUNet(nn.Module):
    """The UNet, and one learned row per category added to its step embedding."""

    def __init__(self, unet: TransFusionUNet, categories: Sequence[str]) -> None:
        super().__init__()
        if not categories or len(set(categories)) != len(categories):
            raise ValueError(f"class conditioning needs distinct category names, got {list(categories)}")
        self.unet = unet
        self.cfg = unet.cfg
        self.categories = tuple(categories)
        self.class_embedding = nn.Embedding(len(categories), 4 * unet.cfg.n_channels)
        nn.init.zeros_(self.class_embedding.weight)

    def index(self, category: str) -> int:
        """The row of ``category``; ValueError naming the categories for another name."""
        try:
            return self.categories.index(category)
        except ValueError:
            raise ValueError(f"category {category!r} is not one of the network's {', '.join(self.categories)}"
                             ) from None

    def forward(self, x_and_mask: torch.Tensor, t: torch.Tensor, classes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The UNet with ``classes`` [B] (row indices) conditioning each image."""
        return self.unet(x_and_mask, t, self.class_embedding(classes.to(x_and_mask.device)))

    def set_recompute(self, enabled: bool) -> "ClassConditionedUNet":
        self.unet.set_recompute(enabled)
        return self

    def for_category(self, category: str) -> "OneCategory":
        """The network as the reverse process calls it, ``net(x_and_mask, t)``, for one category."""
        return OneCategory(self, self.index(category))


class OneCategory:
    """A class-conditioned network (torch, or its ONNX session) bound to one category's row."""

    def __init__(self, network, index: int) -> None:  # network(x, t, classes)
        self.network, self.index = network, int(index)

    def __call__(self, x_and_mask: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        classes = torch.full((x_and_mask.shape[0],), self.index, dtype=torch.long, device=x_and_mask.device)
        return self.network(x_and_mask, t, classes)

    def eval(self) -> "OneCategory":
        """As a module's eval(): evaluation calls it on whatever network it is given."""
        if hasattr(self.network, "eval"):
            self.network.eval()
        return self
