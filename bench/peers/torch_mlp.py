"""PyTorch peers of the MLP workloads, written the way PyTorch users write them (eager, nn.Sequential, DataLoader).

`step(...)`: a bare step loop on one fixed batch (peer of mlp_step).
`loop(...)`: TensorDataset + DataLoader(shuffle=True, drop_last=True), an eval pass on the test split each epoch
(peer of mlp_loop). Both return steps/s as the JAX rows measure it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.peers import timed_calls


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device):
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def mlp(inputs=784, hidden=(256, 128), classes=10):
    layers, width = [], inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def step(batch_size=256, steps=50, repeats=7, lr=0.01, hidden=(256, 128), seed=0):
    """Median steps/s of `steps` optimiser steps on one fixed batch, over `repeats` after a warm-up."""
    torch.manual_seed(seed)
    device = _device()
    model = mlp(hidden=hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 784, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run():
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        _sync(device)

    _, first, per_call, _ = timed_calls(run, repeats)
    return {"impl": "torch eager, fixed batch", "steps_per_s": steps / per_call, "first_call_s": first,
            "steady_call_s": per_call, "peak_bytes": _peak(device)}


def loop(x, y, x_test, y_test, epochs=10, batch_size=256, eval_batch_size=500, lr=0.01, hidden=(256, 128),
         seed=0):
    """The usual training script over uint8 images [N,28,28,1]: steps/s over epochs 2..E (each with its eval)."""
    torch.manual_seed(seed)
    device = _device()
    mean, std = float(x.mean()) / 255, float(x.std()) / 255

    def tensors(images, labels):
        images = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255)
        return TensorDataset((images - mean) / std, torch.from_numpy(labels.astype(np.int64)))

    pin = device.type == "cuda"
    train_loader = DataLoader(tensors(x, y), batch_size=batch_size, shuffle=True, drop_last=True, pin_memory=pin)
    test_loader = DataLoader(tensors(x_test, y_test), batch_size=eval_batch_size, pin_memory=pin)
    model = mlp(hidden=hidden).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    epoch_times, steps, accuracy = [], [], 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        n = 0
        for xb, yb in train_loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            n += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in test_loader:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                correct += (model(xb).argmax(1) == yb).sum().item()
        accuracy = correct / len(x_test)
        _sync(device)
        epoch_times.append(time.perf_counter() - t0)
        steps.append(n)
    later = slice(1, None) if epochs > 1 else slice(None)
    return {"impl": "torch DataLoader loop", "steps_per_s": sum(steps[later]) / sum(epoch_times[later]),
            "epoch_s": epoch_times, "steps": sum(steps), "test_accuracy": accuracy, "peak_bytes": _peak(device)}
