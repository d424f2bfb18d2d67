"""ladd.draws: the heads' noise as a mixture of LogitNormal centres (ladd.disc.noise_m as a list)."""

import math

import torch

from ladd.distill.config import load_distill_config
from ladd.draws import Draws


def _logit(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t) - torch.log1p(-t)


def test_a_list_of_centres_draws_each_sample_from_one_of_them():
    t = Draws(torch.Generator().manual_seed(0)).logit_normal(4000, [1.0, 1.5], 0.01)
    centre = _logit(t)
    near_1, near_15 = (centre - 1.0).abs() < 0.05, (centre - 1.5).abs() < 0.05
    assert bool((near_1 | near_15).all())                    # every sample sits at one of the two centres
    assert 0.45 < near_1.float().mean().item() < 0.55          # drawn with equal probability


def test_a_mixture_is_the_same_numbers_on_any_number_of_processes():
    whole = Draws(torch.Generator().manual_seed(3)).logit_normal(8, [0.0, 1.0, 1.5], 1.0)
    halves = [Draws(torch.Generator().manual_seed(3), rank, 2).logit_normal(4, [0.0, 1.0, 1.5], 1.0)
              for rank in (0, 1)]
    torch.testing.assert_close(torch.cat(halves), whole)


def test_one_centre_is_the_plain_logit_normal():
    cfg = load_distill_config("configs/nano.yaml", ["ladd.disc.noise_m=[1.5]"])
    assert cfg.ladd.disc.noise_m == 1.5                        # a one-element list is that number
    a = Draws(torch.Generator().manual_seed(1)).logit_normal(6, cfg.ladd.disc.noise_m, 1.0)
    b = torch.sigmoid(1.5 + torch.randn(6, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(a, b)


def test_a_mixture_from_the_config_reaches_the_heads_noise():
    cfg = load_distill_config("configs/nano.yaml", ["ladd.disc.noise_m=[1, 1.5]", "ladd.disc.noise_s=0.01"])
    assert cfg.ladd.disc.noise_m == [1.0, 1.5]
    from ladd.methods.components.student import renoise

    _, t = renoise(torch.zeros(64, 2, 2, 2), cfg.ladd.disc.noise_m, cfg.ladd.disc.noise_s,
                   torch.Generator().manual_seed(0))
    seen = {round(v, 1) for v in _logit(t.double()).tolist()}
    assert seen == {1.0, 1.5}, seen
    assert math.isclose(t.min().item(), torch.sigmoid(torch.tensor(1.0)).item(), abs_tol=0.01)
