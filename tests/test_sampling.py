import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ladd import flow
from ladd.models.teacher import TIMESTEP_SCALE
from ladd.models.text_encoder import TextEmbeddings
from ladd.sampling import euler, guided_velocity, renoise, step


def test_euler_matches_diffusers_flow_match_scheduler(tiny_teacher, tiny_cond):
    cond, uncond = tiny_cond(2), tiny_cond(2, seed=1)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    times = flow.euler_grid(6, shift=3.0)
    ours = euler(tiny_teacher, noise, times, cond, uncond, guidance=3.0)

    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=times[:-1].numpy())
    assert np.allclose(sched.sigmas.numpy(), times.numpy(), atol=1e-6)
    x = noise
    with torch.no_grad():
        for ts in sched.timesteps:
            both = TextEmbeddings.cat([cond, uncond])
            out = tiny_teacher.transformer(torch.cat([x, x]), both.tokens, both.pooled, ts.expand(4)).sample
            v_c, v_u = out.chunk(2)
            x = sched.step(v_u + 3.0 * (v_c - v_u), ts, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)


def test_adapter_timestep_scale(tiny_teacher, tiny_cond):
    cond = tiny_cond(2)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        raw = tiny_teacher.transformer(x, cond.tokens, cond.pooled, torch.full((2,), 0.3 * TIMESTEP_SCALE)).sample
        torch.testing.assert_close(tiny_teacher.velocity(x, torch.full((2,), 0.3), cond), raw)


def test_cfg_in_one_batch_equals_separate_calls(tiny_teacher, tiny_cond):
    cond, uncond = tiny_cond(3), tiny_cond(3, seed=1)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor(0.6)
    with torch.no_grad():
        v = guided_velocity(tiny_teacher, x, t, cond, uncond, 4.0)
        v_c = tiny_teacher.velocity(x, t.expand(3), cond)
        v_u = tiny_teacher.velocity(x, t.expand(3), uncond)
        torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(guided_velocity(tiny_teacher, x, t, cond, uncond, 1.0), v_c)


def test_renoise_sampler_is_per_sample_deterministic(tiny_teacher, tiny_cond):
    cond = tiny_cond(3)
    times = torch.cat([flow.student_grid(4), torch.zeros(1)])
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    full = renoise(tiny_teacher, noise, times, cond, generator=gens())
    last = renoise(tiny_teacher, noise[2:], times, cond[2:], generator=gens()[2:])
    torch.testing.assert_close(full[2:], last, rtol=1e-4, atol=1e-5)
    one_step = renoise(tiny_teacher, noise, torch.tensor([1.0, 0.0]), cond)
    with torch.no_grad():
        expected = flow.x0_from_v(noise, tiny_teacher.velocity(noise, torch.ones(3), cond), 1.0)
    torch.testing.assert_close(one_step, expected)


def test_a_euler_step_keeps_the_predicted_noise_and_a_renoise_step_draws_it_afresh():
    """From x_t with velocity v: Euler lands on (1 - t') x0_hat + t' eps_hat (DDIM on the flow), re-noising on
    (1 - t') x0_hat + t' noise; both give x0_hat at t' = 0."""
    g = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    t, t_next = torch.tensor(0.75), torch.tensor(0.5)
    x0, eps = flow.x0_from_v(x, v, t), flow.noise_from_v(x, v, t)
    torch.testing.assert_close(step("euler", x, v, t, t_next), flow.add_noise(x0, eps, t_next))
    torch.testing.assert_close(step("renoise", x, v, t, t_next, noise), flow.add_noise(x0, noise, t_next))
    for sampler in ("euler", "renoise"):
        torch.testing.assert_close(step(sampler, x, v, t, torch.tensor(0.0), noise), x0)
    with pytest.raises(ValueError, match="unknown sampler"):
        step("heun", x, v, t, t_next)


def test_euler_follows_a_straight_flow_exactly_and_a_curved_one_only_with_steps():
    """What benchmarks/reflow.py measures straightness with: 1 Euler step is exact on straight lines only."""
    from types import SimpleNamespace

    z, x = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    straight = SimpleNamespace(velocity=lambda x_t, t, cond: z - x)  # the velocity of x_t = (1 - t) x + t z
    for steps in (1, 4):
        assert torch.allclose(euler(straight, z, flow.euler_grid(steps), None), x, atol=1e-5)
    curved = SimpleNamespace(velocity=lambda x_t, t, cond: x_t * t.view(-1, 1, 1, 1))  # x(0) = x(1) exp(-1/2)
    exact = z * torch.exp(torch.tensor(-0.5))
    one, many = euler(curved, z, flow.euler_grid(1), None), euler(curved, z, flow.euler_grid(200), None)
    assert torch.allclose(many, exact, atol=1e-2) and not torch.allclose(one, exact, atol=1e-1)


def test_sampler_eta_family_spans_renoise_and_euler_and_scales_the_start(tiny_teacher, tiny_cond):
    """benchmarks/sampler_eta.py: eta = 1 is LADD's re-noising sampler (the same fresh noise drawn), eta = 0 Euler
    (DDIM on the flow), and ``noise_scale`` multiplies the starting noise."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from sampler_eta import partial_renoise

    cond = tiny_cond(2)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    times = flow.euler_grid(3)

    def gens():
        return [torch.Generator().manual_seed(k) for k in (1, 2)]

    torch.testing.assert_close(partial_renoise(1.0)(tiny_teacher, noise, times, cond, generator=gens()),
                               renoise(tiny_teacher, noise, times, cond, generator=gens()))
    torch.testing.assert_close(partial_renoise(0.0)(tiny_teacher, noise, times, cond, generator=gens()),
                               euler(tiny_teacher, noise, times, cond), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(partial_renoise(1.0, 0.5)(tiny_teacher, noise, times, cond, generator=gens()),
                               renoise(tiny_teacher, 0.5 * noise, times, cond, generator=gens()))
    assert not torch.allclose(partial_renoise(1.0, 0.5)(tiny_teacher, noise, times, cond, generator=gens()),
                              renoise(tiny_teacher, noise, times, cond, generator=gens()))
