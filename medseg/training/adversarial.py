"""Optional adversarial term (segmentation GAN, Luc et al. 2016): off unless ``training.adversarial_weight > 0``.

A small convolutional discriminator sees (image, class map) pairs and learns to
tell the reference label maps (one-hot) from the network's softmax maps; the
segmentation network gets ``weight x`` the loss of fooling it on top of
Dice+CE, which rewards label maps that look like real ones (plausible shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    def __init__(self, in_channels: int, spatial_dims: int = 3, width: int = 16):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        layers, c = [], in_channels
        for i, w in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [conv(c, w, 4, stride=2, padding=1)]
            if i:
                layers += [norm(w, affine=True)]
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, image: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        h = self.features(torch.cat([image, classes], dim=1))
        return self.head(h.flatten(2).mean(-1))


class AdversarialTerm:
    def __init__(self, *, in_channels: int, num_classes: int, weight: float, lr: float, device):
        self.weight = float(weight)
        self.num_classes = num_classes
        self.disc = Discriminator(in_channels + num_classes).to(device)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.999))

    def generator_loss(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Added to the segmentation loss: how well the softmax maps pass for references."""
        score = self.disc(image, torch.softmax(logits.float(), dim=1))
        return self.weight * F.binary_cross_entropy_with_logits(score, torch.ones_like(score))

    def discriminator_step(self, image: torch.Tensor, logits: torch.Tensor, label: torch.Tensor) -> float:
        ref = F.one_hot(label[:, 0].long(), self.num_classes).movedim(-1, 1).float()
        fake = torch.softmax(logits.detach().float(), dim=1)
        real_score, fake_score = self.disc(image, ref), self.disc(image, fake)
        loss = F.binary_cross_entropy_with_logits(
            real_score, torch.ones_like(real_score)
        ) + F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())
