"""Curvature along the trajectory: the model, a fixed batch, Hessian and gradient-glass probes."""
