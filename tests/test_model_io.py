import stat

import torch

from ladd.models.io import replace_dir, save_model


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_weights_are_as_readable_as_the_config(tmp_path):
    """safetensors writes its file with mode 0600; a shipped or exported model must be readable like its config."""
    out = save_model(torch.nn.Linear(2, 2), tmp_path / "m", {"in": 2}, card="# m\n")
    assert mode(out / "model.safetensors") == mode(out / "config.json")


def test_replace_dir_gives_every_file_the_default_mode(tmp_path):
    """Exports (diffusers' save_pretrained) go through replace_dir too, subfolders included."""
    (tmp_path / "x.tmp" / "scheduler").mkdir(parents=True)
    (tmp_path / "plain").write_text("")
    for name in ("weights.safetensors", "scheduler/config.json"):
        (tmp_path / "x.tmp" / name).write_text("")
        (tmp_path / "x.tmp" / name).chmod(0o600)
    out = replace_dir(tmp_path / "x.tmp", tmp_path / "x")
    assert mode(out / "weights.safetensors") == mode(out / "scheduler" / "config.json") == mode(tmp_path / "plain")


def test_a_truncated_diffusers_transformer_is_one_error_naming_the_folder(tmp_path):
    import pytest

    from ladd.models.io import AssetError
    from ladd.models.teacher import build_nano_teacher, load_teacher
    from helpers import TINY_TEACHER

    build_nano_teacher(**TINY_TEACHER).transformer.save_pretrained(tmp_path / "student")
    weights = tmp_path / "student" / "diffusion_pytorch_model.safetensors"
    assert load_teacher(tmp_path / "student") is not None
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AssetError, match=f"{tmp_path / 'student'} is not a loadable diffusers transformer folder"):
        load_teacher(tmp_path / "student")


def test_a_model_whose_vae_has_moved_is_one_error_naming_ladd_vae(tmp_path):
    """An export names its VAE by a path relative to itself; once the checkout it came from is gone, loading it
    says which setting to fix instead of failing on a missing config.json deep inside."""
    import json

    import pytest

    from ladd.models.io import AssetError
    from ladd.models.registry import load_generator, model_settings, native_size, vae_folder

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"ladd_vae": "../gone/vae", "sample_size": 8}))
    assert model_settings(tmp_path / "m")[2] == tmp_path / "m" / "../gone/vae"  # the JSON alone reads fine
    for use in (native_size, load_generator):
        with pytest.raises(AssetError, match=r"names its VAE folder .*gone/vae \(ladd_vae\).*point ladd_vae"):
            use(str(tmp_path / "m"))
    (tmp_path / "gone" / "vae").mkdir(parents=True)
    (tmp_path / "gone" / "vae" / "config.json").write_text("{}")
    assert vae_folder(tmp_path / "m") == tmp_path / "m" / "../gone/vae"
