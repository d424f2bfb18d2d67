"""One LADD generator step and one discriminator step on a tiny random SD3 teacher (CPU, seconds)."""

import pytest
import torch

from ladd import flow
from ladd.config import ConfigError
from ladd.distill.config import load_distill_config
from ladd.methods.components.heads import Discriminator, build_discriminator
from ladd.methods.components.perceptual import feature_distance
from ladd.methods.components.student import renoise, student_forward
from ladd.models.text_encoder import TextEmbeddings
from ladd.methods.ladd import discriminator_step, generator_step
from ladd.training.optim import build_optimizer
from helpers import changed, setup, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

def test_student_forward_and_renoise_conventions():
    _, teacher, student, _, x0, cond = setup()
    g = torch.Generator().manual_seed(1)
    grid = flow.student_grid(4)
    x0_hat, t_s = student_forward(student, x0, cond, grid, torch.tensor([0.0, 0.0, 0.0, 1.0]), g)
    assert x0_hat.shape == x0.shape and torch.all(t_s == 0.25)
    t_s = student_forward(student, x0, cond, grid, torch.tensor([0.7, 0.1, 0.1, 0.1]), g)[1]
    assert set(t_s.tolist()) <= set(grid.tolist())
    x_noisy, t_hat = renoise(x0, 1.0, 1.0, g)
    assert t_hat.shape == (4,) and torch.all((t_hat > 0) & (t_hat < 1))
    same_t = torch.full((4,), 0.5)
    assert torch.equal(renoise(x0, 1.0, 1.0, g, t=same_t)[1], same_t)
    assert not torch.allclose(x_noisy, x0)


def test_generator_step_trains_the_student_through_the_frozen_teacher():
    cfg, teacher, student, disc, x0, cond = setup()
    opt_g = build_optimizer([student], cfg.optim["student"])
    before_s, before_t = snapshot(student), snapshot(teacher)
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0))
    out.loss.backward()
    # The only path from the student to the loss runs through the teacher's features, so a nonzero student
    # gradient is a gradient that flowed through the frozen teacher.
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in disc.parameters())  # heads are not trained by the G loss
    assert all(p.requires_grad for p in disc.parameters())  # ...and are trainable again afterwards
    opt_g.step()
    assert changed(student, before_s) and not changed(teacher, before_t)
    assert len(out.fake.features) == 2 and not any(f.requires_grad for f in out.fake.features)
    assert {"g_adv", "g_loss", "t_s", "g_fake_score"} <= set(out.metrics)


def test_discriminator_step_trains_heads_only():
    cfg, teacher, student, disc, x0, cond = setup()
    opt_d = build_optimizer([disc], cfg.optim["heads"])
    g = torch.Generator().manual_seed(0)
    fake = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, g).fake
    before_d, before_t = snapshot(disc), snapshot(teacher)
    loss, metrics = discriminator_step(teacher, disc, x0, cond, fake, cfg.ladd, g)
    loss.backward()
    assert all(p.grad is None for p in student.parameters())  # cached fakes are detached
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    opt_d.step()
    assert changed(disc, before_d) and not changed(teacher, before_t)
    assert torch.isfinite(loss)
    assert metrics["d_acc"] == (metrics["acc_real"] + metrics["acc_fake"]) / 2  # equal counts of reals and fakes


def test_discriminator_learns_to_separate_real_from_fake():
    # A few D steps on a fixed real/fake pair: the hinge loss must fall (the heads have the capacity to learn).
    cfg, teacher, student, disc, x0, cond = setup()
    opt_d = build_optimizer([disc], cfg.optim["heads"])
    g = torch.Generator().manual_seed(0)
    fake = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, g).fake
    history = []
    for _ in range(15):
        loss, _ = discriminator_step(teacher, disc, x0, cond, fake, cfg.ladd, torch.Generator().manual_seed(3))
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        history.append(loss.item())
    assert history[-1] < history[0] - 0.2


@pytest.mark.parametrize("overrides", [
    ("ladd.loss.r1_weight=1e-2", "ladd.loss.misaligned_weight=0.5", "ladd.loss.kind=non_saturating"),
    ("ladd.loss.distill_weight=1.0", "ladd.disc.shared_t=true", "ladd.disc.norm=spectral", "ladd.disc.blocks=[1]"),
    ("ladd.disc.global_logit=true",),
])
def test_optional_terms(overrides):
    cfg, teacher, student, disc, x0, cond = setup(*overrides)
    g = torch.Generator().manual_seed(0)
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, g)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    student.zero_grad(set_to_none=True)
    loss, metrics = discriminator_step(teacher, disc, x0, cond, out.fake, cfg.ladd, g)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in student.parameters())
    if cfg.ladd.loss.r1_weight:
        assert metrics["r1"] > 0 and "d_misaligned" in metrics
    if cfg.ladd.loss.distill_weight:
        assert out.metrics["g_distill"] > 0 and len(disc.heads) == 1


def test_paired_noise_is_the_students_input_only_where_it_starts_from_noise():
    _, teacher, student, _, x0, cond = setup()
    grid, noise = flow.student_grid(4), torch.randn_like(x0)
    probs = torch.tensor([0.5, 0.0, 0.5, 0.0])  # t_s in {1, 0.5}
    plain = student_forward(student, x0, cond, grid, probs, torch.Generator().manual_seed(3))
    paired = student_forward(student, x0, cond, grid, probs, torch.Generator().manual_seed(3), noise)
    assert torch.equal(plain[1], paired[1]) and set(plain[1].tolist()) == {1.0, 0.5}
    at_one = plain[1] == 1
    with torch.no_grad():  # at t_s = 1: x0_hat = noise - G(noise, 1)
        expected = noise[at_one] - student(noise[at_one], plain[1][at_one], cond[at_one])
    assert torch.allclose(paired[0][at_one], expected, atol=1e-5)
    assert torch.equal(paired[0][~at_one], plain[0][~at_one])  # fresh noise below t_s = 1, the same draws
    assert not torch.allclose(paired[0][at_one], plain[0][at_one])


def test_the_first_time_reads_pure_noise_below_one_too():
    """student.start_time: the first grid time's input is the starting noise itself, labelled with that time
    (x0_hat = noise - 0.9 G(noise, 0.9)); the later times keep their noised data latents; the paired terms take the
    first time's samples."""
    _, teacher, student, _, x0, cond = setup()
    grid, noise = flow.student_grid(4, start=0.9), torch.randn_like(x0)
    probs = torch.tensor([0.5, 0.0, 0.5, 0.0])
    x0_hat, t_s = student_forward(student, x0, cond, grid, probs, torch.Generator().manual_seed(3), noise)
    first = t_s == grid[0]
    assert torch.allclose(grid[0], torch.tensor(0.9)) and set(t_s.tolist()) == {grid[0].item(), 0.5}
    assert first.any() and (~first).any()
    with torch.no_grad():
        expected = noise[first] - 0.9 * student(noise[first], t_s[first], cond[first])
    assert torch.allclose(x0_hat[first], expected, atol=1e-5)
    plain = student_forward(student, x0, cond, flow.student_grid(4), probs, torch.Generator().manual_seed(3), noise)
    assert torch.equal(x0_hat[~first], plain[0][~first])  # the data latent noised at 0.5, the same draws


def test_regression_term_pulls_the_one_step_output_to_the_teachers_sample():
    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.regression_weight=2.0")
    noise = torch.randn_like(x0)
    with pytest.raises(ValueError, match="starting noise"):
        generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student)
    cfg.student.probs = [1.0, 0.0, 0.0, 0.0]
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         noise=noise)
    expected = (out.fake.x0_hat - x0).pow(2).mean()  # every sample at t_s = 1
    assert torch.allclose(out.metrics["g_regression"], expected, rtol=1e-5)
    assert torch.allclose(out.loss, out.metrics["g_adv"] + 2.0 * expected, rtol=1e-5)
    cfg.student.probs = [0.0, 0.0, 1.0, 0.0]  # no sample starts from noise: the term adds nothing
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         noise=noise)
    assert out.metrics["g_regression"] == 0 and torch.allclose(out.loss, out.metrics["g_adv"])


def test_regression_with_a_huber_c_is_the_pseudo_huber_distance():
    """ladd.loss.regression_huber_c > 0: the term is sqrt(d^2 + c^2) - c per element, about |d| beyond c (the
    median's loss), and a negative c is refused."""
    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.regression_weight=1", "ladd.loss.regression_huber_c=0.1",
                                                  "student.probs=[1,0,0,0]")
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         noise=torch.randn_like(x0))
    d = out.fake.x0_hat - x0
    assert torch.allclose(out.metrics["g_regression"], ((d * d + 0.01).sqrt() - 0.1).mean(), rtol=1e-5)
    assert d.abs().mean() - 0.1 <= out.metrics["g_regression"] <= d.abs().mean()  # |d| within c
    with pytest.raises(ConfigError, match="regression_huber_c"):
        setup("ladd.loss.regression_huber_c=-1")


def test_feature_distance_is_lpips_without_weights():
    f = [torch.randn(3, 8, 4, 4), torch.randn(3, 16, 2, 2)]
    assert torch.allclose(feature_distance(f, f), torch.zeros(3), atol=1e-6)
    assert torch.allclose(feature_distance(f, [2.5 * x for x in f]), torch.zeros(3), atol=1e-6)  # scale-free
    assert torch.allclose(feature_distance(f, [-x for x in f]), torch.full((3,), 4.0), atol=1e-5)  # opposite
    other = [torch.randn_like(x) for x in f]
    d = feature_distance(f, other)
    assert d.shape == (3,) and torch.all((d > 0) & (d < 4))
    with pytest.raises(ValueError, match="blocks"):
        feature_distance(f, f[:1])


def test_feature_term_compares_the_fake_with_its_teacher_sample_under_the_same_noise():
    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.feature_weight=1.5")
    noise = torch.randn_like(x0)
    with pytest.raises(ValueError, match="starting noise"):
        generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student)
    cfg.student.probs = [1.0, 0.0, 0.0, 0.0]

    def step(data):
        return generator_step(student, teacher, disc, data, cond, cfg.ladd, cfg.student,
                              torch.Generator().manual_seed(0), noise=noise)

    out = step(x0)
    assert out.metrics["g_feature"] > 0
    assert torch.allclose(out.loss, out.metrics["g_adv"] + 1.5 * out.metrics["g_feature"], rtol=1e-5)
    # data equal to the student's own 1-step outputs from their noise: the pair is the fake itself, distance 0
    with torch.no_grad():
        own = noise - student(noise, torch.ones(len(noise)), cond)
    assert torch.allclose(step(own).metrics["g_feature"], torch.zeros(()), atol=1e-6)
    cfg.student.probs = [0.0, 0.0, 1.0, 0.0]  # no sample starts from noise: the term adds nothing
    out = step(x0)
    assert out.metrics["g_feature"] == 0 and torch.allclose(out.loss, out.metrics["g_adv"])


def test_discriminator_shapes_on_non_square_latents():
    cfg, teacher, _, disc, _, cond = setup()
    x = torch.randn(4, 4, 8, 12)
    t_hat = torch.rand(4)
    feats = teacher.features(x, t_hat, cond, disc.blocks)
    logits = disc(feats, t_hat, cond.pooled)
    assert [tuple(lg.shape) for lg in logits] == [(4, 1, 8, 12)] * 2
    heads = Discriminator([16, 24], pooled_dim=32, blocks=[0, 3], width=16, t_embed_dim=16)
    out = heads([torch.randn(2, 16, 3, 5), torch.randn(2, 24, 3, 5)], torch.rand(2), torch.randn(2, 32))
    assert [tuple(o.shape) for o in out] == [(2, 1, 3, 5)] * 2


def test_global_logit_sees_the_whole_grid():
    """Without the global term a head's logit at one patch is blind to a patch far away (its convolutions see ~5x5
    patches; spectral norm here: GroupNorm would pass the grid's mean and variance); with it, a change anywhere
    moves every patch's logit, and the term trains with the rest."""
    torch.manual_seed(0)
    feat = torch.randn(2, 16, 8, 8)
    far = feat.clone()
    far[:, :, 0, 0] += 3.0  # a change in one corner
    for global_logit, moves in ((False, False), (True, True)):
        heads = Discriminator([16], pooled_dim=32, blocks=[0], width=16, norm="spectral", t_embed_dim=16,
                              global_logit=global_logit).eval()  # eval: spectral norm's power step rests
        t, pooled = torch.rand(2), torch.randn(2, 32)
        a, b = heads([feat], t, pooled)[0], heads([far], t, pooled)[0]
        assert (not torch.allclose(a[..., 7, 7], b[..., 7, 7])) == moves  # the opposite corner
    b.mean().backward()
    assert heads.heads[0].whole.out.weight.grad.abs().sum() > 0


def test_unknown_block_and_unfrozen_teacher_are_errors():
    cfg, teacher, student, disc, x0, cond = setup()
    bad = load_distill_config("configs/tiny.yaml", ["ladd.disc.blocks=[0, 5]"])
    with pytest.raises(ConfigError, match=r"ladd\.disc\.blocks.*\[5\]"):
        build_discriminator(teacher, bad.ladd.disc)
    with pytest.raises(ValueError, match="freeze"):
        generator_step(student, student, disc, x0, cond, cfg.ladd, cfg.student)


def test_batched_heads_match_separate_calls_and_shared_t():
    from ladd.methods.ladd import _judge

    cfg, teacher, student, disc, x0, cond = setup("ladd.disc.shared_t=true")
    feats = [torch.randn(4, 16, 8, 8) for _ in disc.blocks]
    t_hat, other = torch.rand(4), torch.rand(4)
    a, b = _judge(disc, [(feats, t_hat, cond.pooled), (feats, other, cond.pooled)])
    for x, y in zip(a, disc(feats, t_hat, cond.pooled)):
        torch.testing.assert_close(x, y)
    seen = []
    features = teacher.features
    teacher.features = lambda x, t, c, blocks: seen.append(t) or features(x, t, c, blocks)
    fake = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student).fake
    discriminator_step(teacher, disc, x0, cond, fake, cfg.ladd)
    assert torch.equal(seen[1], fake.t_hat)  # the real branch re-used the fakes' t_hat


def test_guided_distillation_target():
    """teacher_x0 with uncond and guidance w: x0 from v_u + w (v_c - v_u), the two in one batched forward; the
    guided distillation term reaches the student and needs uncond."""
    from ladd.methods.components.student import teacher_x0

    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.distill_weight=1", "ladd.loss.distill_guidance=3")
    uncond = TextEmbeddings(torch.randn(1, 5, 32), torch.randn(1, 32))
    t = torch.full((4,), 0.6)
    b = len(cond)
    u = TextEmbeddings(uncond.tokens.expand(b, -1, -1), uncond.pooled.expand(b, -1))
    with torch.no_grad():
        v = teacher(x0, t, u) + 3 * (teacher(x0, t, cond) - teacher(x0, t, u))
    torch.testing.assert_close(teacher_x0(teacher, x0, t, cond, uncond, 3.0), flow.x0_from_v(x0, v, t))
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         uncond=uncond)
    out.loss.backward()
    assert out.metrics["g_distill"] > 0 and any(p.grad is not None for p in student.parameters())
    from ladd.methods.ladd import LADD

    assert LADD.needs_uncond(cfg.ladd)
    with pytest.raises(ValueError, match="uncond"):
        LADD(cfg.ladd, cfg.student, teacher)


def test_guidance_only_distillation_target():
    """ladd.loss.distill_target=guidance: the term's gradient on x0_hat is only the guidance direction,
    2 (x0_cond - x0_cfg) / N, with no pull towards the teacher's conditional x0; refused without guidance."""
    from ladd.methods.components.student import teacher_x0_pair

    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.distill_weight=1", "ladd.loss.distill_guidance=3",
                                                  "ladd.loss.distill_target=guidance")
    uncond = TextEmbeddings(torch.randn(1, 5, 32), torch.randn(1, 32))
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         uncond=uncond)
    x0_hat, t_hat = out.fake.x0_hat, out.fake.t_hat
    # the same draws again give the re-noised fake: recompute the teacher's pair there
    g = torch.Generator().manual_seed(0)
    x0_again, _ = student_forward(student, x0, cond, flow.student_grid(cfg.student.steps),
                                  torch.tensor(cfg.student.probs_at(0)), g)
    fake, t_again = renoise(x0_again, cfg.ladd.disc.noise_m, cfg.ladd.disc.noise_s, g)
    torch.testing.assert_close(t_again, t_hat)
    x0_cond, x0_cfg = teacher_x0_pair(teacher, fake, t_hat, cond, uncond, 3.0)
    assert not torch.allclose(x0_cond, x0_cfg)
    torch.testing.assert_close(out.metrics["g_distill"], (x0_cfg - x0_cond).pow(2).mean(), rtol=1e-4, atol=1e-6)
    # gradient of the term w.r.t. x0_hat, via a leaf copy of the same computation
    leaf = x0_hat.clone().requires_grad_(True)
    torch.nn.functional.mse_loss(leaf, leaf.detach() + (x0_cfg - x0_cond)).backward()
    torch.testing.assert_close(leaf.grad, 2 * (x0_cond - x0_cfg) / x0_cond.numel())
    with pytest.raises(ConfigError, match="distill_target"):
        setup("ladd.loss.distill_weight=1", "ladd.loss.distill_target=guidance")
    with pytest.raises(ConfigError, match="distill_target"):
        setup("ladd.loss.distill_target=cfg")


def test_guidance_interval_guides_only_the_rows_whose_time_lies_in_it():
    """ladd.loss.distill_guidance_interval: rows with t in [low, high] get the guided x0, the others the
    conditional one; [0, 1] is guidance everywhere; bad intervals are refused before any model is built."""
    from ladd.methods.components.student import teacher_x0_pair

    _, teacher, _, _, x0, cond = setup()
    uncond = TextEmbeddings(torch.randn(1, 5, 32), torch.randn(1, 32))
    t = torch.tensor([0.2, 0.5, 0.7, 0.95])
    fake = flow.add_noise(x0, torch.randn_like(x0), t)
    x0_cond, x0_cfg = teacher_x0_pair(teacher, fake, t, cond, uncond, 3.0)
    assert not torch.allclose(x0_cond, x0_cfg)
    cond_i, cfg_i = teacher_x0_pair(teacher, fake, t, cond, uncond, 3.0, [0.5, 0.8])
    torch.testing.assert_close(cond_i, x0_cond)
    torch.testing.assert_close(cfg_i[1:3], x0_cfg[1:3])  # 0.5 (the edge) and 0.7 inside: guided
    torch.testing.assert_close(cfg_i[[0, 3]], x0_cond[[0, 3]])  # 0.2 and 0.95 outside: conditional
    torch.testing.assert_close(teacher_x0_pair(teacher, fake, t, cond, uncond, 3.0, [0, 1])[1], x0_cfg)
    cfg = setup("ladd.loss.distill_weight=1", "ladd.loss.distill_guidance=3",
                "ladd.loss.distill_guidance_interval=[0.5,1]")[0]
    assert cfg.ladd.loss.distill_guidance_interval == [0.5, 1.0]
    for bad in ("[0.5]", "[0.8,0.2]", "[-0.1,1]", "0.5"):
        with pytest.raises(ConfigError, match="distill_guidance_interval"):
            setup("ladd.loss.distill_guidance=3", f"ladd.loss.distill_guidance_interval={bad}")
    with pytest.raises(ConfigError, match="guidance that is off"):
        setup("ladd.loss.distill_guidance_interval=[0,0.8]")  # nothing to limit without guidance


def test_backward_simulation_feeds_the_students_own_rollout():
    """ladd.backward_simulation: at t_s < 1 the student's input is its own re-noising rollout from noise (the
    data latent does not enter), at t_s = 1 the noise itself; off, the noised data latent."""
    cfg, teacher, student, disc, x0, cond = setup("ladd.backward_simulation=true")
    seen = []
    hook = student.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0))
    with_data = seen[-1]
    seen.clear()
    generator_step(student, teacher, disc, x0 + 100, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0))
    hook.remove()
    assert torch.equal(seen[-1], with_data)  # the student's input does not depend on the data latents
    assert len(seen) > 1  # rollout forwards before the graded one (some t_s < 1 drawn with this seed)
    with pytest.raises(ConfigError, match="backward_simulation"):
        setup("ladd.backward_simulation=2")
    with pytest.raises(ConfigError, match="rollout_paths"):
        setup("ladd.rollout_paths=samplers")  # without backward simulation there are no rollouts
    with pytest.raises(ConfigError, match="rollout_paths"):
        setup("ladd.backward_simulation=true", "ladd.rollout_paths=random")


def test_regression_along_rollouts_starts_every_chain_from_the_teachers_noise():
    """ladd.loss.regression_on=rollout: the rollouts begin at each latent's own noise, and the regression term
    averages over the whole batch (not only the t_s = 1 samples); it needs backward simulation."""
    cfg, teacher, student, disc, x0, cond = setup("ladd.backward_simulation=true", "ladd.loss.regression_weight=1",
                                                  "ladd.loss.regression_on=rollout")
    cfg.student.probs = [0.0, 1.0, 0.0, 0.0]  # every sample one rollout step in: t_s = 0.75
    noise = torch.randn_like(x0)
    seen = []
    hook = student.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         noise=noise)
    hook.remove()
    assert torch.equal(seen[0], noise)  # the rollout's first forward is on the teacher's noise
    expected = (out.fake.x0_hat - x0).pow(2).mean()  # all samples count, though none is at t_s = 1
    assert torch.allclose(out.metrics["g_regression"], expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="backward_simulation"):
        setup("ladd.loss.regression_on=rollout")
    with pytest.raises(ConfigError, match="regression_on"):
        setup("ladd.loss.regression_on=everywhere")


def test_distribution_matching_term_and_its_fake_score():
    """ladd.loss.dm_weight: with the fake score equal to the teacher and no guidance, the real and fake scores
    agree and the term is exactly 0; with the guided real score it pulls the student. The critic step trains the
    fake score on the G step's outputs and nothing else."""
    from ladd.methods.components.student import init_student
    from ladd.methods.ladd import critic_step

    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.dm_weight=1")
    fake_score = init_student(teacher)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="fake score"):
        generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, g)
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, g, fake_score=fake_score)
    assert out.metrics["g_dm"] == 0
    cfg.ladd.loss.distill_guidance = 3.0
    uncond = TextEmbeddings(torch.randn(1, 5, 32), torch.randn(1, 32))
    out = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         uncond=uncond, fake_score=fake_score)
    assert out.metrics["g_dm"] > 0
    before_s, before_f = snapshot(student), snapshot(fake_score)
    loss, metrics = critic_step(fake_score, cond, out.fake.x0_hat, cfg.ladd, torch.Generator().manual_seed(1))
    loss.backward()
    assert metrics["critic_flow"] > 0 and all(p.grad is None for p in student.parameters())
    build_optimizer([fake_score], cfg.optim["critic"]).step()
    assert changed(fake_score, before_f) and not changed(student, before_s)


def test_misaligned_reals_on_a_fraction_of_the_batch():
    """ladd.loss.misaligned_fraction=0.5: the misaligned branch runs the teacher on the first half of the batch
    only (B + B/2 samples in the D step's forward instead of 2B)."""
    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.misaligned_weight=0.25",
                                                  "ladd.loss.misaligned_fraction=0.5")
    fake = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student,
                          torch.Generator().manual_seed(0)).fake
    seen = []
    counting = lambda x, t, c, blocks=None: seen.append(len(x)) or teacher(x, t, c, blocks)  # noqa: E731
    counting.parameters = teacher.parameters
    loss, metrics = discriminator_step(counting, disc, x0, cond, fake, cfg.ladd, torch.Generator().manual_seed(1))
    assert seen == [len(x0) + len(x0) // 2] and torch.isfinite(metrics["d_misaligned"])
    with pytest.raises(ConfigError, match="misaligned_fraction"):
        setup("ladd.loss.misaligned_fraction=0")


def test_reals_on_a_fraction_of_the_batch():
    """ladd.loss.real_fraction=0.25: the real branch runs the teacher on the first quarter of the batch only, beside
    a misaligned half (B/4 + B/2 samples in the D step's forward), and the heads judge B/4 reals against all B
    fakes; a share outside (0, 1] is refused."""
    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.misaligned_weight=0.25",
                                                  "ladd.loss.misaligned_fraction=0.5", "ladd.loss.real_fraction=0.25")
    fake = generator_step(student, teacher, disc, x0, cond, cfg.ladd, cfg.student,
                          torch.Generator().manual_seed(0)).fake
    seen, judged = [], []
    counting = lambda x, t, c, blocks=None: seen.append(len(x)) or teacher(x, t, c, blocks)  # noqa: E731
    counting.parameters = teacher.parameters
    hook = disc.register_forward_hook(lambda _m, inputs, _out: judged.append(len(inputs[1])))
    loss, metrics = discriminator_step(counting, disc, x0, cond, fake, cfg.ladd, torch.Generator().manual_seed(1))
    hook.remove()
    b = len(x0)
    assert seen == [b // 4 + b // 2] and judged == [b // 4 + b + b // 2]
    assert torch.isfinite(loss) and torch.isfinite(metrics["d_real"])
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="real_fraction"):
            setup(f"ladd.loss.real_fraction={bad}")


def test_adversarial_pass_on_a_fraction_of_the_batch():
    """ladd.loss.adversarial_fraction=0.5: the G step runs the teacher and the heads on the first half of the
    student's outputs only, the regression term still counts the whole batch, and the D step judges those B/2 fakes;
    at the default (1) the G step is what it was."""
    cfg, teacher, student, disc, x0, cond = setup("ladd.loss.adversarial_fraction=0.5", "ladd.loss.regression_weight=1",
                                                  "student.probs=[1,0,0,0]")
    noise = torch.randn_like(x0)
    seen = []
    counting = lambda x, t, c, blocks=None: seen.append(len(x)) or teacher(x, t, c, blocks)  # noqa: E731
    counting.parameters = teacher.parameters
    out = generator_step(student, counting, disc, x0, cond, cfg.ladd, cfg.student, torch.Generator().manual_seed(0),
                         noise=noise)
    b = len(x0)
    assert seen == [b // 2] and len(out.fake.t_hat) == b // 2 and len(out.fake.pooled) == b // 2
    assert len(out.fake.x0_hat) == b
    assert torch.allclose(out.metrics["g_regression"], (out.fake.x0_hat - x0).pow(2).mean(), rtol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    judged = []
    hook = disc.register_forward_hook(lambda _m, inputs, _out: judged.append(len(inputs[1])))
    loss, _ = discriminator_step(teacher, disc, x0, cond, out.fake, cfg.ladd, torch.Generator().manual_seed(1))
    hook.remove()
    assert judged == [b + b // 2] and torch.isfinite(loss)
    full, _, _, _, _, _ = setup("ladd.loss.regression_weight=1", "student.probs=[1,0,0,0]")
    a = generator_step(student, teacher, disc, x0, cond, full.ladd, full.student, torch.Generator().manual_seed(0),
                       noise=noise)
    full.ladd.loss.adversarial_fraction = 1.0 - 1e-9  # ceil(~1 * B) = B: the same draws, the same loss
    c = generator_step(student, teacher, disc, x0, cond, full.ladd, full.student, torch.Generator().manual_seed(0),
                       noise=noise)
    assert torch.equal(a.loss, c.loss) and len(a.fake.t_hat) == b
    with pytest.raises(ConfigError, match="adversarial_fraction"):
        setup("ladd.loss.adversarial_fraction=0")
    with pytest.raises(ConfigError, match="shared_t"):  # a real per fake's noise level: too few fakes
        setup("ladd.loss.adversarial_fraction=0.5", "ladd.disc.shared_t=true")


@pytest.mark.parametrize("backward", [False, True])
def test_the_student_runs_only_the_rows_that_reach_a_loss(monkeypatch, backward):
    """The game on part of the batch: below t_s = 1 only the adversarial share's predictions reach a loss, so the
    other rows drawn there are neither run nor (with backward simulation) rolled out; the loss, the predictions that
    count and every student gradient are those of the step that runs the whole batch, for fewer student rows."""
    import ladd.methods.ladd as ladd_method

    cfg, teacher, student, disc, x0, cond = setup(
        f"ladd.backward_simulation={str(backward).lower()}", "ladd.loss.adversarial_fraction=0.5",
        "ladd.loss.regression_weight=1", "student.probs=[0.25,0.25,0.25,0.25]")
    noise, b = torch.randn_like(x0), len(x0)
    rows = []

    def counting(x, t, c):
        rows.append(len(x))
        return student(x, t, c)

    counting.parameters = student.parameters

    def step():
        rows.clear()
        student.zero_grad()
        out = generator_step(counting, teacher, disc, x0, cond, cfg.ladd, cfg.student,
                             torch.Generator().manual_seed(3), noise=noise)
        out.loss.backward()
        return out, sum(rows), [p.grad.clone() for p in student.parameters()]

    skipped, n_skipped, g_skipped = step()
    full_forward = ladd_method.student_forward
    monkeypatch.setattr(ladd_method, "student_forward", lambda *a: full_forward(*a[:-1], None))
    full, n_full, g_full = step()
    assert n_skipped < n_full and torch.equal(skipped.metrics["t_s"], full.metrics["t_s"])
    assert torch.allclose(skipped.loss, full.loss, atol=1e-6)
    for name in ("g_adv", "g_regression"):
        assert torch.allclose(skipped.metrics[name], full.metrics[name], atol=1e-6)
    assert torch.allclose(skipped.fake.x0_hat[:b // 2], full.fake.x0_hat[:b // 2], atol=1e-6)
    assert all(torch.allclose(a, c, atol=1e-6) for a, c in zip(g_skipped, g_full))


def test_the_heads_rest_between_their_updates():
    """ladd.disc_every=2: iterations 0, 2, ... update student and heads, the others the student only."""
    from ladd.methods.ladd import LADD

    cfg = load_distill_config("configs/tiny.yaml", ["ladd.disc_every=2"])
    method = LADD.__new__(LADD)
    method.cfg = cfg.ladd
    assert [u.phases for u in method.updates(0)] == [("generator", "discriminator")]
    assert [(u.phases, u.optimizers) for u in method.updates(1)] == [(("generator",), ("student",))]
    with pytest.raises(ConfigError, match="disc_every"):
        load_distill_config("configs/tiny.yaml", ["ladd.disc_every=0"])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_features_stop_after_the_last_tapped_block(checkpointing):
    """Heads on early blocks: the forward ends at the last tapped block (a hook counts the blocks that ran), with
    the same features and the same gradient to the input as a forward that runs to the end."""
    _, teacher, *_ = setup()
    if checkpointing:
        teacher.enable_gradient_checkpointing()
        teacher.transformer.train()  # diffusers checkpoints only in training mode
    n = teacher.num_blocks
    ran = []
    handles = [blk.register_forward_hook(lambda *_, i=i: ran.append(i))
               for i, blk in enumerate(teacher.transformer.transformer_blocks)]
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    cond = TextEmbeddings(torch.randn(2, 5, 32), torch.randn(2, 32))
    grads = []
    for blocks in ([0], [0, n - 1]):  # the second taps the last block too: the whole forward runs
        ran.clear()
        xg = x.clone().requires_grad_(True)
        feats = teacher.features(xg, t, cond, blocks)
        assert ran == list(range(max(blocks) + 1))
        feats[0].square().sum().backward()
        grads.append((feats[0].detach(), xg.grad))
    for h in handles:
        h.remove()
    assert torch.equal(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
    assert grads[0][1].abs().sum() > 0
