"""Training and evaluation loops for the sequence classifiers (CPU, small models)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .tasks import Split, TaskData


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 64
    weight_decay: float = 0.01
    seed: int = 0
    clip_grad: float = 1.0
    warmup_epochs: int = 1


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = 0.0
    test_accuracy: float = float("nan")
    seconds: float = 0.0


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split.y), batch_size):
        logits = model(split.x[start:start + batch_size])
        correct += int((logits.argmax(dim=-1) == split.y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(split.y), 1)


def _param_groups(model: nn.Module, cfg: TrainConfig):
    if hasattr(model, "param_groups"):
        return model.param_groups(cfg.lr, weight_decay=cfg.weight_decay)
    return [{"params": list(model.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]


def train(model: nn.Module, data: TaskData, cfg: TrainConfig,
          on_epoch: Callable[[EpochStats], None] | None = None,
          on_batch: Callable[[int, int], None] | None = None) -> TrainResult:
    """AdamW with warm-up and cosine decay; keeps the weights of the best (latest among equals) validation epoch."""
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg))
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n = len(data.train.y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    result = TrainResult()
    best_state = copy.deepcopy(model.state_dict())
    t_start = time.perf_counter()
    step = 0
    order_gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=order_gen)
        loss_sum, correct = 0.0, 0
        for b, start in enumerate(range(0, n, cfg.batch_size)):
            idx = order[start:start + cfg.batch_size]
            x, y = data.train.x[idx], data.train.y[idx]
            scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                                   max(total - warmup, 1)))
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * scale
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            if hasattr(model, "after_step"):
                model.after_step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(dim=-1) == y).sum())
            step += 1
            if on_batch is not None:
                on_batch(b + 1, steps_per_epoch)
        if hasattr(model, "after_epoch"):
            model.after_epoch(epoch, cfg.epochs)
        val = accuracy(model, data.val)
        stats = EpochStats(epoch, loss_sum / n, correct / n, val, time.perf_counter() - t0)
        result.history.append(stats)
        # ">=": among equally good epochs keep the latest, which has seen the most of the annealed schedule
        if val >= result.best_val_accuracy or result.best_epoch < 0:
            result.best_val_accuracy, result.best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(stats)
    model.load_state_dict(best_state)
    result.test_accuracy = accuracy(model, data.test)
    result.seconds = time.perf_counter() - t_start
    return result


def accuracy_under_noise(model: nn.Module, split: Split, draws: int = 5, seed: int = 0) -> tuple[float, float, list]:
    """Test accuracy over ``draws`` simulated chips (each one fixed draw of the analog perturbation)."""
    from .analog import simulated_chip

    values = []
    for d in range(draws):
        with simulated_chip(model, seed + d):
            values.append(accuracy(model, split))
    t = torch.tensor(values)
    return float(t.mean()), float(t.std()) if draws > 1 else 0.0, values
