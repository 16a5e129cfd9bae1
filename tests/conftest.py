"""Shared pytest set-up: a non-interactive matplotlib backend and one thread per test worker."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
