import stat

import torch

from ladd.models.io import save_model


def test_saved_weights_are_as_readable_as_the_config(tmp_path):
    """safetensors writes its file with mode 0600; a shipped or exported model must be readable like its config."""
    out = save_model(torch.nn.Linear(2, 2), tmp_path / "m", {"in": 2}, card="# m\n")
    mode = lambda name: stat.S_IMODE((out / name).stat().st_mode)
    assert mode("model.safetensors") == mode("config.json")
