"""Model builders for `trajcli curvature --model curvature_models:NAME` in the tests (tests/ is on the
import path). Each takes the checkpoints' config.json as a dict and returns (module, loss_fn)."""

from __future__ import annotations

import torch
from torch import nn


def mse(module: nn.Module, batch: dict) -> torch.Tensor:
    return ((module(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()


def least_squares(config: dict):
    """L(w, b) = mean((Xw + b − y)²): a quadratic with Hessian 2AᵀA/n, A = [X 1]."""
    return nn.Linear(config["features"], 1), mse


class MLP(nn.Module):
    def __init__(self, features: int, hidden: int, activation: str):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(features, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)])
        self.act = {"tanh": torch.tanh, "relu": torch.relu}[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


def mlp(config: dict):
    return MLP(config["features"], config["hidden"], config["activation"]), mse
