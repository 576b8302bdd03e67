"""Shared test setup: one torch thread (the tests run on 2 shared cores, where more threads only contend)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
