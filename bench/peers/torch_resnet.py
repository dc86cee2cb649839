"""PyTorch peer of the ResNet step workloads (resnet18_cifar, resnet50), written the way PyTorch users write it.

A hand-written ResNet v1.5 (torchvision cannot be installed beside this torch wheel): BasicBlock / Bottleneck with the
stride on the 3x3 conv, the CIFAR stem (3x3/1 conv, no max-pool) or the ImageNet one (7x7/2 conv + 3x3/2 max-pool),
BatchNorm (momentum 0.1 = flax's 0.9, eps 1e-5), He fan-out init, a Linear head. Its parameter count is asserted
equal to ptft_jax's model (11,173,962 for ResNet-18 CIFAR at 10 classes, 25,557,032 for ResNet-50 at 1000).

`step(...)`: eager steps on one fixed batch of uint8 images already on the device, normalised in the step as
ptft_jax's step does; torch.optim.SGD (momentum, nesterov, weight decay). On CUDA: cudnn.benchmark, channels_last
and autocast to bfloat16 (params and optimiser state float32); on CPU: float32.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.peers import step_row, timed_calls

KNOWN_COUNTS = {("basic", (2, 2, 2, 2), 64, "cifar", 10): 11_173_962,
                ("bottleneck", (3, 4, 6, 3), 64, "imagenet", 1000): 25_557_032}


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)


def _bn(c, zero=False):
    bn = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
    if zero:
        nn.init.zeros_(bn.weight)
    return bn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, filters, stride, zero_init_residual=False):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, filters, 3, stride), _bn(filters)
        self.conv2, self.bn2 = _conv(filters, filters, 3), _bn(filters, zero_init_residual)
        self.shortcut = None
        if stride != 1 or cin != filters:
            self.shortcut = nn.Sequential(_conv(cin, filters, 1, stride), _bn(filters))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, filters, stride, zero_init_residual=False):
        super().__init__()
        out = filters * 4
        self.conv1, self.bn1 = _conv(cin, filters, 1), _bn(filters)
        self.conv2, self.bn2 = _conv(filters, filters, 3, stride), _bn(filters)
        self.conv3, self.bn3 = _conv(filters, out, 1), _bn(out, zero_init_residual)
        self.shortcut = None
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(_conv(cin, out, 1, stride), _bn(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, block="basic", stage_sizes=(2, 2, 2, 2), num_classes=1000, width=64, stem="imagenet",
                 zero_init_residual=False):
        super().__init__()
        cls = BasicBlock if block == "basic" else Bottleneck
        k, stride = (7, 2) if stem == "imagenet" else (3, 1)
        self.stem = nn.Sequential(_conv(3, width, k, stride), _bn(width), nn.ReLU(inplace=True),
                                  *([nn.MaxPool2d(3, 2, 1)] if stem == "imagenet" else []))
        blocks, cin = [], width
        for stage, size in enumerate(stage_sizes):
            for i in range(size):
                filters = width * 2 ** stage
                blocks.append(cls(cin, filters, 2 if stage > 0 and i == 0 else 1, zero_init_residual))
                cin = filters * cls.expansion
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def step(images, labels, params, block="basic", stage_sizes=(2, 2, 2, 2), width=64, stem="cifar", classes=10,
         zero_init_residual=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), lr=0.1, momentum=0.9,
         nesterov=False, weight_decay=0.0, label_smoothing=0.0, steps=20, repeats=5, warmup=1, seed=0, **_):
    """Median steps/s of `steps` SGD steps on one fixed batch (uint8 NHWC `images`, int `labels`), over `repeats`
    after `warmup` untimed calls. `params`: ptft_jax's parameter count, asserted equal to this model's."""
    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = ResNet(block, tuple(stage_sizes), classes, width, stem, zero_init_residual)
    n = sum(p.numel() for p in model.parameters())
    assert n == params, f"torch ResNet has {n:,} params, ptft_jax's {params:,}"
    known = KNOWN_COUNTS.get((block, tuple(stage_sizes), width, stem, classes))
    assert known is None or n == known, f"torch ResNet has {n:,} params, expected {known:,}"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    x8 = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)  # NCHW view of NHWC uint8
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def run():
        for _ in range(steps):
            x = ((x8.float() / 255 - m) / s).contiguous(memory_format=fmt)
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()

    _, first, per_call, times = timed_calls(run, repeats, warmup)
    model = opt = None  # freed before the row is built (a del would leave run()'s names undefined)
    dtype = "bfloat16 autocast, channels_last" if cuda else "float32"
    return step_row(f"torch eager, fixed batch, {dtype}", steps, first, per_call, times, n, cuda)
