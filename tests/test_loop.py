"""The training loop on accelerate (CPU, tiny random models): exact resume (2 + 2 steps equal 4), Ctrl-C writes a
checkpoint, a NaN loss stops the run and keeps the last good checkpoint, the run folder's files."""

import json
import os
import signal

import pytest
import torch

from ladd.data.shards import ShardDataset
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method
from ladd.methods import ladd as L
from ladd.models.teacher import load_teacher
from ladd.training.checkpoint import checkpoint_dirs, latest_checkpoint
from ladd.training.trainer import NonFiniteLossError, train
from helpers import assets_with_data, make_assets, tiny_overrides

# Same seeds, same order of floating-point operations: resumed weights should match bit for bit; the tolerance
# only allows for reductions that a different thread count could reorder.
ATOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return assets_with_data(tmp_path_factory.mktemp("loop"))


def run(root, name, *extra):
    """tiny.yaml: 4 iterations, batch 4 = 2 micro-batches of 2, checkpoints every 2, EMA 0.9, log every step."""
    cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, f"paths.run_dir={root / name}", *extra))
    return train(cfg, build_method(cfg), ShardDataset.load(cfg.paths.data), root / name)


@pytest.fixture(scope="module")
def straight(root):
    return run(root, "straight")


def assert_same(a, b):
    for part in ("student", "heads"):
        sa, sb = a.modules[part].state_dict(), b.modules[part].state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], atol=ATOL, rtol=0, msg=f"{part}.{k}")
    for p, q in zip(a.ema.shadow.parameters(), b.ema.shadow.parameters()):
        torch.testing.assert_close(p, q, atol=ATOL, rtol=0)


def test_two_plus_two_steps_equal_four(root, straight):
    teacher = load_teacher(root / "teacher")
    moved = max((p - q).abs().max() for p, q in zip(straight.modules["student"].parameters(), teacher.parameters()))
    assert moved > 1e-4  # the student trained, so equality below means something
    first = run(root, "resumed", "train.steps=2")
    assert first.step == 2 and latest_checkpoint(root / "resumed" / "checkpoints").name == "step-000002"
    second = run(root, "resumed")
    assert second.step == 4
    assert_same(straight, second)
    steps = [json.loads(line)["step"] for line in (root / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_ctrl_c_writes_a_checkpoint_and_resumes_exactly(root, straight, monkeypatch):
    calls = []
    real = L.generator_step

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # iteration 1, first micro-batch: as if the user pressed Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "generator_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(root, "ctrl-c")
    assert len(calls) == 2  # the iteration in progress was finished, no further one started
    assert latest_checkpoint(root / "ctrl-c" / "checkpoints").name == "step-000001"
    monkeypatch.setattr(L, "generator_step", real)
    assert_same(straight, run(root, "ctrl-c"))


@pytest.mark.parametrize("log_every", [1, 3])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(root, monkeypatch, log_every):
    calls = []
    real = L.generator_step

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 5:  # from iteration 3 on (2 micro-batches per iteration)
            out.loss = out.loss * float("nan")
            out.metrics["g_loss"] = out.loss.detach()
        return out

    monkeypatch.setattr(L, "generator_step", poisoned)
    name = f"nan-{log_every}"
    with pytest.raises(NonFiniteLossError, match=r"iteration 3.*step-000002"):
        run(root, name, f"train.log_every={log_every}")
    ckpts = checkpoint_dirs(root / name / "checkpoints")
    assert [c.name for c in ckpts] == ["step-000002"]  # nothing written after the NaN
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(ckpts[0] / "student.safetensors").values())


def test_run_folder(root, straight):
    run_dir = root / "straight"
    assert (run_dir / "config.yaml").is_file() and "heads:" in (run_dir / "config.yaml").read_text()
    assert any(f.name.startswith("events.out.tfevents") for f in (run_dir / "tb").iterdir())
    line = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"g_loss", "d_loss", "acc_real", "acc_fake", "student_grad_norm", "heads_grad_norm"} <= set(line)
    assert line["step"] == 4 and line["d_acc"] == pytest.approx((line["acc_real"] + line["acc_fake"]) / 2)
    assert [c.name for c in checkpoint_dirs(run_dir / "checkpoints")] == ["step-000002", "step-000004"]
    state = json.loads((run_dir / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["version"] == 2 and state["config"]["train"]["steps"] == 4 and state["config"]["method"] == "ladd"
    assert set(state["optimizers"]) == set(state["schedules"]) == {"student", "heads"}
    assert straight.step == 4 and run(root, "straight").step == 4  # a finished run resumes to its end at once


TWO_PROCESS_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import FakeEncoder, tiny_overrides
from ladd.data.shards import ShardDataset
from ladd.data.synth import synthesize
from ladd.distill.config import load_distill_config
from ladd.distill.run import build_method
from ladd.runtime import end_processes, process_state
from ladd.training.trainer import train

root = Path({root!r})
state = process_state()
cfg = load_distill_config("configs/tiny.yaml", tiny_overrides(root, "paths.run_dir=" + str(root / "ddp")))
written = synthesize(cfg, FakeEncoder())
state.wait_for_everyone()
result = train(cfg, build_method(cfg), ShardDataset.load(cfg.paths.data), root / "ddp")
checksum = sum(float(p.double().sum()) for p in result.modules["student"].parameters())
if state.is_main_process:
    from safetensors.torch import save_file
    save_file({{k: v.contiguous() for k, v in result.modules['student'].state_dict().items()}}, root / "ddp-student.safetensors")
# one file per process: the two processes' stdout lines can interleave mid-line (seen in CI: "2RESULT")
line = " ".join(map(str, [state.process_index, state.num_processes, ",".join(map(str, written)), result.step,
                          repr(checksum)]))
(root / f"result-{{state.process_index}}.txt").write_text(line)
state.wait_for_everyone()
end_processes()  # as the CLI does: a gloo group left open at exit can abort the process (seen in CI)
"""


@pytest.mark.slow  # ~20 s: two Python processes (gloo), each importing torch and diffusers, then one process
def test_two_processes_train_like_one(tmp_path, one_thread):
    """2 processes x micro-batch 1 (DDP, gloo) vs 1 process x micro-batch 2, same global batch of 4 (2 micro-steps
    of gradient accumulation each): every process draws the global batch's data and noise and keeps its slice
    (ladd.draws), so the trained students agree up to the order of floating-point sums."""
    import subprocess
    import sys
    from pathlib import Path

    make_assets(tmp_path)
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [(tmp_path / f"result-{rank}.txt").read_text().split() for rank in (0, 1)]
    assert [r[:4] for r in results] == [["0", "2", "0,2", "4"], ["1", "2", "1", "4"]]  # shard k: process k % 2
    assert results[0][4] == results[1][4]  # DDP kept the two students identical
    assert (tmp_path / "ddp" / "checkpoints" / "step-000004" / "state.json").is_file()
    from safetensors.torch import load_file

    ddp = load_file(tmp_path / "ddp-student.safetensors")
    single = run(tmp_path, "single").modules["student"].state_dict()
    teacher = load_teacher(tmp_path / "teacher").state_dict()
    assert max((single[k] - teacher[k]).abs().max() for k in single) > 1e-4  # both trained: agreement means something
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-4, msg=k)


def test_ema_warm_up_and_decay():
    from ladd.training.ema import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0]):
        model.weight.data.fill_(value)
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        assert abs(ema.shadow.weight.item() - expected) < 1e-6
    assert int(ema.updates) == 3



def test_the_warm_up_caps_the_decay_and_a_decay_it_never_reaches_is_named(root, caplog):
    """The EMA's decay is min(decay, (1 + n) / (10 + n)): 0.995 applies only from update 1,791 on, so in shorter
    runs every decay above the warm-up's last value gives the same student; the run says so at its start."""
    from ladd.training.ema import EMA, updates_to_reach, warmed_decay

    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5)
    applied = []
    for _ in range(12):  # the weight each update gives the model, read back from the shadow
        before = ema.shadow.weight.item()
        model.weight.data.fill_(before + 1.0)
        ema.update(model)
        applied.append(1 - (ema.shadow.weight.item() - before))
    assert applied == pytest.approx([warmed_decay(0.5, u) for u in range(1, 13)], abs=1e-6)
    assert updates_to_reach(0.5) == 9 and applied[7] < 0.5 and applied[8] == pytest.approx(0.5)
    assert (updates_to_reach(0.995), updates_to_reach(0.999)) == (1791, 8991)
    with caplog.at_level("INFO"):
        run(root, "ema-short")  # tiny.yaml: EMA 0.9 over 4 iterations (the warm-up ends at 4 / 13)
    assert "train.ema_decay=0.9 applies from update 81 on; in these 4 steps" in caplog.text
    assert "ending at 0.3077" in caplog.text


@pytest.mark.parametrize("warmup", [0.0, 3.0])
def test_the_warm_up_constant_sets_how_long_the_early_average_is(warmup):
    """``train.ema_warmup`` w: the decay at update u is min(decay, u / (u + w)); 0 applies the decay at once."""
    from ladd.training.ema import EMA, updates_to_reach, warmed_decay

    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.8, warmup=warmup)
    applied = []
    for _ in range(15):
        before = ema.shadow.weight.item()
        model.weight.data.fill_(before + 1.0)
        ema.update(model)
        applied.append(1 - (ema.shadow.weight.item() - before))
    expected = [min(0.8, u / (u + warmup)) for u in range(1, 16)]
    assert applied == pytest.approx(expected, abs=1e-6)
    assert applied == pytest.approx([warmed_decay(0.8, u, warmup) for u in range(1, 16)], abs=1e-6)
    assert updates_to_reach(0.8, warmup) == (1 if warmup == 0 else 12)  # 12 / 15 = 0.8


def test_a_negative_ema_warm_up_is_refused():
    from ladd.config import ConfigError
    from ladd.training.config import TrainConfig

    with pytest.raises(ConfigError, match="train.ema_warmup"):
        TrainConfig(ema_warmup=-1)

def test_bf16_with_gradient_checkpointing_trains(root):
    """train.mixed_precision=bf16 (teacher stored in bf16, student and heads in fp32 under autocast) with
    train.gradient_checkpointing: the large-model settings run on CPU and the student moves."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # accelerate keeps one mixed-precision setting per process
    try:
        result = run(root, "bf16", "train.mixed_precision=bf16", "train.gradient_checkpointing=true")
    finally:
        AcceleratorState._reset_state()
    teacher = load_teacher(root / "teacher")
    assert result.step == 4 and next(result.modules["student"].parameters()).dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(result.metrics[k])) for k in ("g_loss", "d_loss"))
    assert max((p - q).abs().max() for p, q in zip(result.modules["student"].parameters(), teacher.parameters())) > 1e-4
    assert result.modules["student"].transformer.gradient_checkpointing


@pytest.mark.parametrize("damage", ["student.safetensors", "optim.safetensors", "state.json", "missing"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(root, straight, damage, caplog):
    """A truncated (or missing) file in the newest checkpoint: it is named, moved aside as step-XXXXXX.bad, and
    the run resumes from the previous checkpoint to the same result as an uninterrupted run."""
    import shutil

    name = f"damaged-{damage.split('.')[0]}"
    shutil.copytree(root / "straight", root / name)
    newest = root / name / "checkpoints" / "step-000004"
    if damage == "missing":
        (newest / "heads.safetensors").unlink()
    else:
        data = (newest / damage).read_bytes()
        (newest / damage).write_bytes(data[: len(data) // 2])
    (root / name / "metrics.jsonl").write_text("")
    result = run(root, name)
    assert result.step == 4
    assert (root / name / "checkpoints" / "step-000004.bad").is_dir() and "step-000004" in caplog.text
    assert_same(straight, result)


def test_heads_updated_every_other_iteration(root):
    """ladd.disc_every=2: the discriminator phase runs at iterations 0 and 2 of 4; each logged metric is the mean
    over the iterations that produced it (no zeros for the iterations without a D step)."""
    result = run(root, "d-every-2", "ladd.disc_every=2")
    lines = [json.loads(s) for s in (root / "d-every-2" / "metrics.jsonl").read_text().splitlines()]
    assert [("d_loss" in line) for line in lines] == [True, False, True, False]  # log_every 1
    assert all(line["d_loss"] > 0.5 for line in lines if "d_loss" in line)  # hinge: ~2 at the start, not halved
    assert result.step == 4


def test_extra_emas_are_the_averages_their_own_runs_would_ship(root, straight):
    """train.extra_emas: an extra [decay, warmup] EMA, over a run resumed halfway, holds what a run with that
    EMA as its own ships, and nothing else of the run changes (training never reads it); `ladd export --ema`
    ships it and names the kept ones when asked for another."""
    from ladd.config import ConfigError
    from ladd.distill.export import load_run_student

    extra = "train.extra_emas=[[0.5, 1]]"
    run(root, "extra-ema", "train.steps=2", extra)
    both = run(root, "extra-ema", extra)
    assert both.step == 4
    assert_same(straight, both)  # student, heads and the shipped EMA (0.9) as without the extra one
    run(root, "own-ema", "train.ema_decay=0.5", "train.ema_warmup=1")
    kept, step, _, _ = load_run_student(root / "extra-ema", extra_ema="0.5:1")
    own, _, _, _ = load_run_student(root / "own-ema")
    assert step == 4
    for p, q in zip(kept.parameters(), own.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=ATOL, rtol=0)
    shipped, _, _, _ = load_run_student(root / "extra-ema")
    assert max((p - q).abs().max() for p, q in zip(kept.parameters(), shipped.parameters())) > 1e-6
    with pytest.raises(ConfigError, match="keeps no such EMA; its train.extra_emas: 0.5:1"):
        load_run_student(root / "extra-ema", extra_ema="0.9:3")


def test_resuming_with_another_set_of_emas_is_refused_and_moves_nothing(root):
    """A checkpoint without the EMA the resumed run asks for is a changed config, not a damaged checkpoint: the
    run stops with the setting named and the checkpoints stay where they are."""
    from ladd.training.checkpoint import CheckpointError

    run(root, "ema-changed", "train.steps=2")
    with pytest.raises(CheckpointError, match="train.extra_emas changed"):
        run(root, "ema-changed", "train.extra_emas=[[0.5, 1]]")
    assert [p.name for p in (root / "ema-changed" / "checkpoints").iterdir()] == ["step-000002"]


@pytest.mark.parametrize("pairs, match", [([[0.5]], "pairs"), ([[1.0, 3]], "decay in"), ([[0.5, -1]], "decay in"),
                                          ([[0.999, 9]], "already kept"), ([[0.5, 1], [0.5, 1]], "already kept")])
def test_bad_extra_emas_are_refused(pairs, match):
    from ladd.config import ConfigError
    from ladd.training.config import TrainConfig

    with pytest.raises(ConfigError, match=rf"train.extra_emas\[\d\].*{match}"):
        TrainConfig(extra_emas=pairs)
