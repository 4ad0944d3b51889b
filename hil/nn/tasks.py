"""Sequence-classification tasks that run offline, with fixed seeded train/validation/test splits.

* ``digits`` / ``digits_permuted``: scikit-learn's 8x8 digits read pixel by pixel (64 steps, 1 feature;
  the data ship inside scikit-learn). The permuted variant applies one fixed random pixel order.
* ``mnist1d``: the MNIST-1D dataset (Greydanus 2020) generated procedurally by its package from its
  built-in templates (40 steps, 1 feature, 10 classes); nothing is downloaded.
* ``period``: needs *precise short delays*. Each sequence repeats a random +-1 pattern of period
  p in {3, ..., 8} with additive noise; the class is p. Telling p from p +- 1 needs the value exactly
  p steps back, which a delay line gives directly and a fading recurrent memory only approximately.
* ``cue``: needs *long memory*. A class cue (one of 4 one-hot symbols) is shown in the first 4 steps,
  followed by 200 steps of distractor noise; the class is the cue. Only a memory spanning the whole
  sequence solves it; a delay line shorter than the sequence cannot.
The two synthetic tasks stand in for the mGRADE paper's multi-scale tasks, whose exact definitions
are not public: one isolates short, exact delays, the other long retention.

Each task declares how a model pools its features over time before the classifier
(:data:`TASK_POOLS`, :attr:`TaskData.pool`): the mean over all steps, or for memory tasks the
last step only. A mean would carry the cue to the end of the sequence by itself, so a model whose
receptive field is far shorter than the sequence would still solve ``cue``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TASKS = ("digits", "digits_permuted", "mnist1d", "period", "cue")
TASK_POOLS = {"cue": "last"}     # the others pool by the mean


@dataclass
class Split:
    x: torch.Tensor      # (n, length, features) float32
    y: torch.Tensor      # (n,) int64


@dataclass
class TaskData:
    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int

    @property
    def pool(self) -> str:
        """How a model reads the sequence out: ``"mean"`` over its steps or its ``"last"`` step."""
        return TASK_POOLS.get(self.name, "mean")

    @property
    def seq_len(self) -> int:
        return self.train.x.shape[1]

    @property
    def d_input(self) -> int:
        return self.train.x.shape[2]


def _split(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, test: float, val: float):
    """Stratified split: the same class proportions in every part."""
    parts = {"train": [], "val": [], "test": []}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test * idx.size))
        n_val = int(round(val * idx.size))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    out = {}
    for name, chunks in parts.items():
        idx = rng.permutation(np.concatenate(chunks))
        out[name] = Split(torch.as_tensor(x[idx], dtype=torch.float32), torch.as_tensor(y[idx], dtype=torch.int64))
    return out


def _digits(permuted: bool, seed: int) -> TaskData:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float32) / 16.0          # (1797, 64) in [0, 1]
    if permuted:
        x = x[:, np.random.default_rng(12345).permutation(64)]
    parts = _split(x[:, :, None], data.target, np.random.default_rng(seed), test=0.2, val=0.1)
    return TaskData("digits_permuted" if permuted else "digits", parts["train"], parts["val"], parts["test"], 10)


def _mnist1d(seed: int) -> TaskData:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = 42       # the dataset as published; ``seed`` only picks the validation part
    data = make_dataset(args)
    x_train = np.asarray(data["x"], dtype=np.float32)
    y_train = np.asarray(data["y"])
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y_train))
    n_val = len(y_train) // 10
    val, train = idx[:n_val], idx[n_val:]
    as_split = lambda x, y: Split(torch.as_tensor(x[:, :, None]), torch.as_tensor(y, dtype=torch.int64))  # noqa: E731
    return TaskData("mnist1d", as_split(x_train[train], y_train[train]), as_split(x_train[val], y_train[val]),
                    as_split(np.asarray(data["x_test"], dtype=np.float32), np.asarray(data["y_test"])), 10)


def _period(seed: int, n: int = 3000, length: int = 48, noise: float = 0.3) -> TaskData:
    rng = np.random.default_rng(seed)
    periods = np.arange(3, 9)
    y = rng.integers(0, len(periods), n)
    x = np.empty((n, length), dtype=np.float32)
    for i, c in enumerate(y):
        p = periods[c]
        pattern = rng.choice([-1.0, 1.0], size=p)
        x[i] = np.resize(pattern, length) + noise * rng.standard_normal(length)
    parts = _split(x[:, :, None], y, rng, test=0.2, val=0.1)
    return TaskData("period", parts["train"], parts["val"], parts["test"], len(periods))


def _cue(seed: int, n: int = 3000, length: int = 204, symbols: int = 4, cue_steps: int = 4,
         noise: float = 0.5) -> TaskData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, symbols, n)
    x = (noise * rng.standard_normal((n, length, symbols))).astype(np.float32)
    x[np.arange(n), :cue_steps, y] += 2.0
    parts = _split(x, y, rng, test=0.2, val=0.1)
    return TaskData("cue", parts["train"], parts["val"], parts["test"], symbols)


def load_task(name: str, seed: int = 0) -> TaskData:
    if name == "digits":
        return _digits(False, seed)
    if name == "digits_permuted":
        return _digits(True, seed)
    if name == "mnist1d":
        return _mnist1d(seed)
    if name == "period":
        return _period(seed)
    if name == "cue":
        return _cue(seed)
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
