"""benchmarks/reflow.py: the Euler sampler it measures straightness with."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from reflow import euler  # noqa: E402


def test_euler_follows_a_straight_flow_exactly_and_a_curved_one_only_with_steps():
    z, x = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    straight = lambda x_t, t, cond: z - x  # noqa: E731  the velocity of x_t = (1 - t) x + t z
    for steps in (1, 4):
        assert torch.allclose(euler(straight, z, None, steps), x, atol=1e-5)
    curved = lambda x_t, t, cond: x_t * t.view(-1, 1, 1, 1)  # noqa: E731  dx/dt = t x: x(0) = x(1) exp(-1/2)
    exact = z * torch.exp(torch.tensor(-0.5))
    one, many = euler(curved, z, None, 1), euler(curved, z, None, 200)
    assert torch.allclose(many, exact, atol=1e-2) and not torch.allclose(one, exact, atol=1e-1)
