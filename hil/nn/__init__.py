"""Sequence models (S4D, minGRU, DCLS delay convolution, mGRADE) with analog-aware training.

Each layer has a parallel form for training and a streaming ``step`` form whose matrix-vector
products all go through a pluggable :mod:`~hil.nn.matvec`.
"""
