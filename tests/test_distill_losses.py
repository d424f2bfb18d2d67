"""LADD losses on hand-built logits: exact values."""

import math

import pytest
import torch

from ladd.methods.components import gan_losses as losses


def t(*values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)  # one sample, 1 x N logit map


def test_d_hinge_exact_per_head_sum():
    real = [t(2.0, 0.5, -1.0), t(0.0)]      # relu(1 - x): [0, .5, 2] -> 5/6 ; [1] -> 1
    fake = [t(-2.0, 0.0, 1.0), t(-0.5)]     # relu(1 + x): [0, 1, 2] -> 1 ; [.5] -> .5
    assert losses.d_hinge(real, fake).item() == pytest.approx(5 / 6 + 1 + 1 + 0.5)


def test_hinge_is_on_each_head_not_on_the_sum_of_heads():
    # Head 1 is confidently right, head 2 wrong: the hinge of the summed logit (relu(1 - 2) = 0) would hide head 2.
    real = [t(3.0), t(-1.0)]
    assert losses.d_hinge(real, []).item() == pytest.approx(0.0 + 2.0)


def test_g_hinge_and_empty_sides():
    assert losses.g_hinge([t(1.0, 3.0), t(-1.0)]).item() == pytest.approx(-(2.0 - 1.0))
    assert losses.d_hinge([], []).item() == 0.0
    assert losses.d_loss("hinge", [t(0.0)], []).item() == pytest.approx(1.0)


def test_non_saturating_exact():
    log2 = math.log(2.0)
    assert losses.d_non_saturating([t(0.0)], [t(0.0)]).item() == pytest.approx(2 * log2)
    assert losses.g_non_saturating([t(0.0, 100.0)]).item() == pytest.approx(log2 / 2, abs=1e-6)
    assert losses.d_loss("non_saturating", [t(-1.0)], []).item() == pytest.approx(math.log1p(math.e))


def test_losses_average_over_batch_and_positions():
    real = [torch.tensor([[[[0.0, 2.0]]], [[[4.0, -3.0]]]])]  # [2, 1, 1, 2]: relu(1 - x) = [1, 0, 0, 4]
    assert losses.d_hinge(real, []).item() == pytest.approx(5 / 4)


def test_r1_penalty_of_a_linear_head():
    # s_b = mean over h*w positions of sum_c a x  ->  d s_b / d x = a / (h w) per element,
    # so R1 = c h w (a / (h w))^2 = a^2 c / (h w), and d R1 / d a = 2 a c / (h w).
    b, c, h, w = 3, 4, 2, 5
    a = torch.tensor(2.0, requires_grad=True)
    x = torch.randn(b, c, h, w, requires_grad=True)
    r1 = losses.r1_penalty([(a * x).sum(1, keepdim=True)], [x])
    assert r1.item() == pytest.approx(4 * c / (h * w))
    r1.backward()  # differentiable w.r.t. the head's parameters (create_graph), so it can train the heads
    assert a.grad.item() == pytest.approx(2 * 2 * c / (h * w))


def test_disc_accuracy():
    real = [torch.tensor([1.0, -1.0, 2.0, 3.0]).reshape(4, 1, 1, 1)]   # 3 of 4 right
    fake = [torch.tensor([-1.0, -2.0, 0.5, -0.1]).reshape(4, 1, 1, 1)]  # 3 of 4 right
    assert losses.disc_accuracy(real, fake).item() == pytest.approx(6 / 8)
    # the per-sample score averages heads: +3 and -1 give +1 -> right for a real sample
    assert losses.disc_accuracy([t(3.0), t(-1.0)], [t(-1.0), t(0.5)]).item() == 1.0
