"""The student and its inputs, shared by methods: the copy of the teacher, its forward on noised data latents,
re-noising at a drawn time (docs/method.md, "One training iteration", steps 2-4).

Randomness goes through an explicit ``torch.Generator`` or ``ladd.draws.Draws`` (the trainer's: the same
numbers at any process count). Models are called through ``__call__`` so that DDP / FSDP wrappers sync
gradients and gather shards.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from ladd import flow
from ladd.config import ConfigError
from ladd.draws import Draws, as_draws
from ladd.models.grow import insert_blocks
from ladd.models.lora import add_lora
from ladd.models.teacher import load_teacher
from ladd.models.text_encoder import TextEmbeddings
from ladd.models.wrap import unwrap
from ladd.sampling import step


def velocity(model, x: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings) -> torch.Tensor:
    """The model's velocity through ``__call__``: a DDP/FSDP wrapper syncs gradients and gathers shards only
    there (and FSDP's wrapper forwards attribute lookups such as ``.velocity`` past itself)."""
    return model(x, t, cond)


@contextmanager
def param_grads_off(module: torch.nn.Module):
    """Build graphs without parameter grads for ``module`` (grads still flow through it to its inputs).
    ``requires_grad`` is read when the graph is built, so restoring it before ``backward`` is safe."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Frozen teacher: eval mode, no parameter grads (it is still differentiable w.r.t. its inputs)."""
    return model.eval().requires_grad_(False)


def check_frozen(teacher) -> None:
    if any(p.requires_grad for p in teacher.parameters()):
        raise ValueError("the teacher has trainable parameters; pass ladd.methods.components.student.freeze(teacher)")


def init_student(teacher: torch.nn.Module, cfg=None) -> torch.nn.Module:
    """The student G: a copy of the teacher's weights (docs/method.md, Components), or with ``cfg.init`` (a
    StudentConfig) of that folder's model, with ``cfg.extra_blocks`` copies of its blocks inserted (ladd.models.grow),
    all trainable, or with ``cfg.lora_rank > 0`` frozen under trainable LoRA
    adapters (ladd.models.lora)."""
    student = copy.deepcopy(unwrap(teacher)).train().requires_grad_(True)
    if cfg is not None and cfg.init is not None:
        load_init(student, cfg.init)
    if cfg is not None and cfg.extra_blocks:
        student.transformer = insert_blocks(student.transformer, cfg.extra_blocks,
                                            cfg.extra_gate).train().requires_grad_(True)
    if cfg is not None and cfg.lora_rank > 0:
        add_lora(student, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    if cfg is not None and cfg.frozen:
        kept = set(frozen_names(student.transformer, cfg.frozen))
        for name, p in student.transformer.named_parameters():
            if name in kept:
                p.requires_grad_(False)
    return student


def jitter_text(cond: TextEmbeddings, scale: float, generator: torch.Generator | Draws | None) -> TextEmbeddings:
    """The prompts' embeddings with Gaussian noise of ``scale`` times each vector's RMS added (each token state and
    the pooled vector; zero padding stays zero): the student's conditioning perturbed, the targets' not, so that
    nearby embeddings (other phrasings of a prompt) give the same image (NEFTune's noisy embeddings, Jain et al.
    2023, on the text encoder's outputs; ``ladd.text_noise``)."""
    draws = as_draws(generator)

    def jitter(x: torch.Tensor) -> torch.Tensor:
        return x + scale * x.pow(2).mean(-1, keepdim=True).sqrt() * draws.randn(x)

    return TextEmbeddings(jitter(cond.tokens), jitter(cond.pooled))


def frozen_names(transformer: torch.nn.Module, parts: list[str]) -> list[str]:
    """``student.frozen``: the names of ``transformer``'s parameters that contain one of ``parts`` (names such as
    ``transformer_blocks.0.ff_context.net.2.weight``); a part that no name contains is a ``ConfigError`` (a typo
    would otherwise freeze nothing)."""
    names = [name for name, _ in transformer.named_parameters()]
    for part in parts:
        if not any(part in name for name in names):
            raise ConfigError(f"student.frozen: {part!r} is in no parameter name of the teacher (names look like "
                              f"{names[0]!r} or {names[len(names) // 2]!r}); give parts of names, e.g. ff_context")
    return [name for name in names if any(part in name for part in parts)]


def load_init(student: torch.nn.Module, folder: str) -> None:
    """``student.init``: the weights of the model in ``folder`` (its architecture is checked against the teacher's
    before training, ladd.distill.run.check_config). A copy of a teacher built without weights (the other processes
    of an FSDP launch that loads on rank 0 only) stays so: rank 0's weights reach it as the teacher's do."""
    if any(p.is_meta for p in student.parameters()):
        return
    try:
        student.load_state_dict(load_teacher(folder).state_dict())
    except RuntimeError as e:  # names or shapes (its config.json matched the teacher's: a damaged folder)
        raise ValueError(f"student.init: the weights in {folder} do not fit the teacher's architecture "
                         f"({str(e).splitlines()[0]}); give a model distilled from the teacher") from e


def student_forward(student, x0: torch.Tensor, cond: TextEmbeddings, grid: torch.Tensor, probs: torch.Tensor,
                    generator: torch.Generator | Draws | None = None, noise: torch.Tensor | None = None,
                    backward: bool = False, paired_rollouts: bool = False, sampler: str = "renoise",
                    paths: str = "grid", needed: torch.Tensor | None = None):
    """``(x0_hat [B, C, h, w], t_s [B])``: ``t_s ~ probs`` over ``grid`` (e.g. ``[1, .75, .5, .25]``),
    ``x_t = (1 - t_s) x0 + t_s eps``, ``x0_hat = x_t - t_s G(x_t, t_s)`` (docs/method.md, step 2). At the grid's
    first time (1, or ``student.start_time``) ``x_t`` is pure noise; below, it is the noised *data* latent, as in
    training with the sampler's inputs.
    ``noise`` (``[B, C, h, w]``, each latent's own starting noise) replaces ``eps`` at the first time: the
    student's input is then the noise from which the teacher made ``x0``. ``backward`` (backward simulation,
    DMD2): below ``t_s = 1`` the input is instead the state the student's own ``sampler`` reaches from ``eps``
    (``rollout``, no grad), what it meets when sampling. ``paired_rollouts`` (with ``backward`` and
    ``noise``): the rollouts start from ``noise`` too, so that every prediction lies on a chain that began at the
    teacher's own starting noise of ``x0``. ``paths``: which sampler's path each rollout takes (``rollout``).
    ``needed`` (bool ``[B]``): the rows whose prediction reaches a loss below ``t_s = 1``; the others drawn below
    it are neither rolled out nor run, and their ``x0_hat`` is their data latent (detached). The draws are the same
    either way, so the computed rows' predictions, and every gradient through them, are those of the whole batch."""
    draws = as_draws(generator)
    idx = draws.choice(probs, x0.shape[0])
    t_s = grid.to(idx.device)[idx].to(x0.device, x0.dtype)
    eps = draws.randn(x0)  # drawn in any case: the same random stream with and without ``noise``
    first = (idx == 0).to(x0.device).view(-1, *[1] * (x0.dim() - 1))  # pure noise there, even below t = 1
    if noise is not None:
        own = torch.ones_like(first) if backward and paired_rollouts else first
        eps = torch.where(own, noise.to(eps), eps)
    if needed is not None:
        # worked out on the host from one copy of the draws (the batch's shape depends on them: one host sync, and
        # the rollout's own copy of its plan is then of host-made indices)
        idx_h = idx.cpu()
        needed = needed.cpu() | (idx_h == 0)  # the first time: run in any case (the paired terms)
        idx = torch.where(needed, idx_h, torch.zeros_like(idx_h))  # the skipped rows: no rollout
    if backward:
        x_t = rollout(student, eps, cond, grid.to(x0.device, x0.dtype), idx.to(x0.device), draws, sampler, paths)
    else:
        x_t = torch.where(first, eps, flow.add_noise(x0, eps, t_s))
    if needed is None:
        return flow.x0_from_v(x_t, velocity(student, x_t, t_s, cond), t_s), t_s
    rows = needed.nonzero().squeeze(1).to(x0.device)
    x_r, t_r = x_t.index_select(0, rows), t_s.index_select(0, rows)
    x0_r = flow.x0_from_v(x_r, velocity(student, x_r, t_r, cond[rows]), t_r)
    return x0.detach().to(x0_r.dtype).index_copy(0, rows, x0_r), t_s


def rollout(student, noise: torch.Tensor, cond: TextEmbeddings, grid: torch.Tensor, idx: torch.Tensor,
            draws: Draws, sampler: str = "renoise", paths: str = "grid") -> torch.Tensor:
    """Sample ``b`` of ``noise`` ``[B, C, h, w]`` taken by the student's ``sampler`` (``renoise`` or ``euler``,
    ladd.sampling) from time 1 to ``grid[idx[b]]`` (no grad; ``idx = 0``: the noise itself). ``paths``:
    ``"grid"``, through every grid time on the way (the path of the sampler with as many steps as the grid);
    ``"samplers"``, the path of one of the samplers with fewer steps that reach that time, drawn uniformly: for the
    grid {1, .75, .5, .25}, half the rollouts to 0.5 jump there in one step, as the 2-step sampler (times {1, .5})
    does, and the other half pass 0.75, as the 4-step sampler does.

    Every process makes the same draws and the same student calls whatever its own samples' times (a wrapped
    student syncs in its forward: DDP's buffers, FSDP's shards): the noise of every grid step is drawn, and a
    (step, stride) with none of this process's samples on it runs the student on one sample and drops the result."""
    n = grid.numel()
    strides = [s for s in range(1, n + 1) if n % s == 0] if paths == "samplers" else [1]
    stride = torch.ones_like(idx)
    if paths == "samplers":
        options = torch.tensor(strides, device=idx.device)
        valid = idx[:, None] % options == 0                      # [B, S]: the samplers whose times hold grid[idx]
        pick = (draws.uniform(idx.numel(), 0, 1, idx.device) * valid.sum(1)).long()
        stride = options[((valid.cumsum(1) - 1 == pick[:, None]) & valid).int().argmax(1)]
    x = noise.clone()
    if idx.numel() == 0:
        return x
    # Which rows each (step, stride) moves, worked out on the host from one copy of the plan: on a GPU the loop
    # then waits for the device once per rollout, not once per group (a mask's count is a sync).
    idx_h = idx.cpu()
    stride_h = stride.cpu() if paths == "samplers" else torch.ones_like(idx_h)  # the plain grid: no second copy
    with torch.no_grad():
        for j in range(n - 1):
            eps = draws.randn(x)  # drawn for the whole batch: the same numbers at any process count
            for s in (s for s in strides if j % s == 0 and j + s < n):
                rows = ((idx_h > j) & (stride_h == s)).nonzero().squeeze(1)  # then j + s <= idx: multiples of s
                some = rows.numel() > 0
                rows = (rows if some else torch.zeros(1, dtype=torch.long)).to(x.device, non_blocking=True)
                xs, c = x.index_select(0, rows), cond[rows]
                v = student(xs, grid[j].expand(xs.shape[0]), c)
                if some:
                    x.index_copy_(0, rows, step(sampler, xs, v, grid[j], grid[j + s], eps.index_select(0, rows)))
    return x


def renoise(x: torch.Tensor, m: float | list[float], s: float, generator: torch.Generator | Draws | None = None,
            t: torch.Tensor | None = None):
    """``(x_noisy, t_hat)``: ``t_hat ~ LogitNormal(m, s)`` ``[B]`` (a list ``m``: a mixture, ladd.draws; or the
    given ``t``),
    ``x_noisy = (1 - t_hat) x + t_hat eps`` (docs/method.md, steps 3-4). Differentiable w.r.t. ``x``."""
    draws = as_draws(generator)
    if t is None:
        t = draws.logit_normal(x.shape[0], m, s, device=x.device)
    t = t.to(x.device, x.dtype)
    return flow.add_noise(x, draws.randn(x), t), t


def teacher_x0(teacher, x_noisy: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings,
               uncond: TextEmbeddings | None = None, guidance: float = 1.0) -> torch.Tensor:
    """The teacher's x0 prediction, no grad (a regression target); with ``uncond`` (one empty-prompt embedding)
    and ``guidance != 1`` classifier-free guided, ``v = v_u + w (v_c - v_u)``, in one batched forward."""
    return teacher_x0_pair(teacher, x_noisy, t, cond, uncond, guidance)[1]


def teacher_x0_pair(teacher, x_noisy: torch.Tensor, t: torch.Tensor, cond: TextEmbeddings,
                    uncond: TextEmbeddings | None = None, guidance: float = 1.0,
                    interval: tuple[float, float] = (0.0, 1.0)):
    """``(x0_cond, x0_guided)``: the teacher's conditional and classifier-free guided x0 predictions, no grad,
    from one batched forward (the same tensor twice without ``uncond`` or at ``guidance == 1``). Guidance applies
    to the rows whose time lies in ``interval`` (inclusive), the others get the conditional prediction (guidance
    in a limited interval, Kynkaanniemi et al. 2024, arXiv 2404.07724)."""
    with torch.no_grad():
        x_noisy = x_noisy.detach()
        if uncond is None or guidance == 1.0:
            x0 = flow.x0_from_v(x_noisy, teacher(x_noisy, t, cond), t)
            return x0, x0
        b = x_noisy.shape[0]
        u = TextEmbeddings(uncond.tokens.expand(b, -1, -1), uncond.pooled.expand(b, -1)).to(cond.tokens)
        v_c, v_u = teacher(torch.cat([x_noisy, x_noisy]), torch.cat([t, t]), TextEmbeddings.cat([cond, u])).chunk(2)
        inside = (t >= interval[0]) & (t <= interval[1])  # every row at [0, 1]
        w = torch.where(inside, guidance, 1.0).to(v_c.dtype).view(-1, *[1] * (v_c.dim() - 1))
        return flow.x0_from_v(x_noisy, v_c, t), flow.x0_from_v(x_noisy, v_u + w * (v_c - v_u), t)


def shuffled_prompts(cond: TextEmbeddings, shift: int = 1) -> TextEmbeddings:
    """Prompts rolled by ``shift``: for 0 < shift < B every sample gets another sample's prompt."""
    return TextEmbeddings(cond.tokens.roll(shift, 0), cond.pooled.roll(shift, 0))
