"""Where sampling runs: ``--device`` / ``--dtype`` of ``ladd sample`` and ``ladd eval`` (ladd.runtime.pick_device,
pick_dtype). The GPU path itself needs a GPU; here: the choices, the errors, and bf16 weights under autocast on
the CPU (the same code path a GPU takes)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ladd.data.synth as synth
from helpers import make_assets, tiny_overrides
from ladd.cli import main
from ladd.config import ConfigError
from ladd.runtime import pick_device, pick_dtype


def test_defaults_follow_the_machine():
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16  # a device object needs no GPU
    assert pick_dtype("fp16", "cpu") == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_a_gpu_asked_for_without_one_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        pick_device("cuda")
    out = tmp_path / "o"
    code = main(["eval", "--model", "nano-teacher", "--device", "cuda", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda" in err and "use --device cpu" in err
    assert not out.exists()  # failed before anything was written


def test_bad_device_and_dtype_names(tmp_path, capsys):
    with pytest.raises(ConfigError, match="not a device"):
        pick_device("gpu0")
    with pytest.raises(ConfigError, match="--dtype 'int8'"):
        pick_dtype("int8", "cpu")
    code = main(["sample", "--prompt", "a circle", "--device", "tpu7", "--out", str(tmp_path / "x.png")])
    assert code == 2 and "not a device" in capsys.readouterr().err


def test_bf16_weights_sample_like_fp32():
    """bf16 weights under autocast (the default on a GPU) give the fp32 images up to rounding: same noise, same
    objects; the sampler's state stays float32."""
    from ladd.generate import generate, image_seed
    from ladd.models.registry import load_generator

    prompts, seeds = ["a red circle", "two blue squares", "a yellow cross"], [image_seed(0, i, 0) for i in range(3)]
    full = load_generator("nano-student", "cpu", "fp32")
    half = load_generator("nano-student", "cpu", "bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert next(half.vae.parameters()).dtype == torch.bfloat16
    a, _ = generate(full, prompts, seeds, steps=4, guidance=1.0, sampler="renoise")
    b, _ = generate(half, prompts, seeds, steps=4, guidance=1.0, sampler="renoise")
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert 0 < diff.mean() < 4  # rounding, not another image


def test_eval_records_where_it_ran(tmp_path):
    import json

    out = tmp_path / "e"
    assert main(["eval", "--model", "nano-student", "--limit", "2", "--per-prompt", "1", "--device", "cpu",
                 "--dtype", "bf16", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["device"] == "cpu" and m["dtype"] == "bfloat16"


def test_a_diffusers_teacher_is_read_straight_onto_the_device(tiny_teacher, tmp_path, monkeypatch):
    """load_teacher(..., device=GPU) hands diffusers a device_map, so the weights go from the file to the GPU
    without a full copy in host memory (every process of `ladd synth` under torchrun samples with the whole
    teacher); `ladd synth` and `ladd sample` / `ladd eval` pass their device. The GPU itself is stood in for by
    recording the call; on the CPU nothing changes."""
    from ladd.models import teacher as teacher_module

    tiny_teacher.transformer.save_pretrained(tmp_path / "t")
    seen = []
    real = teacher_module.from_pretrained
    monkeypatch.setattr(teacher_module, "from_pretrained", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    on_cpu = teacher_module.load_teacher(tmp_path / "t", device="cpu")
    assert "device_map" not in seen[-1] and next(on_cpu.parameters()).device.type == "cpu"
    if torch.cuda.is_available():
        assert next(teacher_module.load_teacher(tmp_path / "t", device="cuda:0").parameters()).is_cuda
    else:
        with pytest.raises((AssertionError, RuntimeError), match="CUDA"):  # placing the weights fails, once asked to
            teacher_module.load_teacher(tmp_path / "t", device="cuda:0")
    assert seen[-1]["device_map"] == {"": torch.device("cuda:0")}

    asked = []
    monkeypatch.setattr(teacher_module, "load_teacher", lambda path, device=None: asked.append(device) or on_cpu)
    cfg = SimpleNamespace(paths=SimpleNamespace(teacher=tmp_path / "t"), data=SimpleNamespace(batch_size=2))
    synth.load_models(cfg, {"source": "teacher"}, text_encoder=object(), device="cuda:3")
    assert asked == ["cuda:3"]


def test_synth_device_reaches_the_models_and_a_missing_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    """`ladd synth --device` picks where a single process samples (default: accelerate's device, the GPU when
    there is one); a GPU asked for on a machine without one fails before the data folder is touched."""
    make_assets(tmp_path)
    asked = []

    def stop(cfg, gen, text_encoder=None, device="cpu"):
        asked.append(torch.device(device))
        raise _Stop  # the device is all this test needs: stop before sampling

    monkeypatch.setattr(synth, "load_models", stop)
    with pytest.raises(_Stop):
        main(["synth", "--config", "configs/tiny.yaml", "--device", "cpu", *tiny_overrides(tmp_path)])
    assert asked == [torch.device("cpu")]
    if not torch.cuda.is_available():
        data = tmp_path / "other-data"
        code = main(["synth", "--config", "configs/tiny.yaml", "--device", "cuda",
                     *tiny_overrides(tmp_path, f"paths.data={data}")])
        err = capsys.readouterr().err
        assert code == 2 and "--device cuda" in err and "use --device cpu" in err
        assert not data.exists() and len(asked) == 1


class _Stop(Exception):
    pass


def test_a_command_leaves_its_process_group(tmp_path, monkeypatch):
    """Every `ladd` command, however it ends, leaves the launch's process group: a gloo group left open at exit
    can abort a process that finished its work (exit -6, "terminate called without an active exception")."""
    import torch.distributed as dist

    import ladd.cli

    def joins_then_fails(args):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        raise ConfigError("bad input")

    parser = ladd.cli.build_parser()
    monkeypatch.setattr(ladd.cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_known_args", lambda argv: (SimpleNamespace(func=joins_then_fails,
                                                                                  verbose=False), []))
    assert main(["eval"]) == 2
    assert not dist.is_initialized()
