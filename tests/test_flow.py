import pytest
import torch

from ladd import flow


def test_add_noise_endpoints_and_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    assert torch.equal(flow.add_noise(x0, eps, 0.0), x0)
    assert torch.equal(flow.add_noise(x0, eps, 1.0), eps)
    t = torch.tensor([0.1, 0.5, 0.9])
    xt = flow.add_noise(x0, eps, t)
    v = flow.velocity(x0, eps)
    torch.testing.assert_close(flow.x0_from_v(xt, v, t), x0)
    torch.testing.assert_close(flow.noise_from_v(xt, v, t), eps)
    # per-sample t broadcasts over the batch dimension only
    torch.testing.assert_close(xt[1], 0.5 * x0[1] + 0.5 * eps[1])


def test_grids_and_densities():
    torch.testing.assert_close(flow.student_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    torch.testing.assert_close(flow.student_grid(1), torch.tensor([1.0]))
    grid = flow.euler_grid(4)
    assert grid[0] == 1 and grid[-1] == 0 and len(grid) == 5 and (grid.diff() < 0).all()
    shifted = flow.euler_grid(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > grid[1:-1]).all()
    t = flow.logit_normal(20000, m=1.0, s=1.0, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(t.median().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 0.01  # median sigmoid(m) = 0.73


def test_the_student_grid_from_another_start_time():
    torch.testing.assert_close(flow.student_grid(1, start=0.9), torch.tensor([0.9]))
    torch.testing.assert_close(flow.student_grid(4, start=0.9), torch.tensor([0.9, 0.75, 0.5, 0.25]))
    torch.testing.assert_close(flow.sampling_times("euler", 2, start=0.8), torch.tensor([0.8, 0.5, 0.0]))
    torch.testing.assert_close(flow.sampling_times("euler", 2), flow.euler_grid(2))
    for bad in (0.75, 1.2):
        with pytest.raises(ValueError, match="start must lie in"):
            flow.student_grid(4, start=bad)
