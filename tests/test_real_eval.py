"""Real-model evaluation without the nano evaluator: CLIP score (a transformers CLIP folder) and FID (a TorchScript
Inception file) on plain prompts, with tiny random stand-ins for both (same interfaces as the real weights)."""

import json

import numpy as np
import pytest
import torch

from ladd.cli import main


class TinyInception(torch.nn.Module):
    """The interface of clean-fid's inception-2015-12-05.pt: float [0, 255] images, ``return_features=True``."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 5, stride=4)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.shape[-1] == 299 and x.shape[-2] == 299
        y = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x / 255.0)), 1).flatten(1)
        return y if return_features else y.sum(1, keepdim=True)


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    from ladd.models.text_encoder import minilm_path

    root = tmp_path_factory.mktemp("scorers")
    torch.manual_seed(0)
    script = torch.jit.script(TinyInception())
    script.save(str(root / "inception.pt"))
    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    cfg = CLIPConfig(text_config=dict(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                      eos_token_id=tok.sep_token_id),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2), projection_dim=8)
    CLIPModel(cfg).save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    return root


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red circle\n\ntwo blue squares\na yellow cross on the left\n")
    return p


def test_plain_prompts_get_clip_score_and_fid_against_a_reference(tmp_path, scorers):
    prompts = _prompts(tmp_path)
    ref = tmp_path / "teacher"
    assert main(["eval", "--model", "nano-teacher", "--prompts", str(prompts), "--per-prompt", "4", "--steps", "4",
                 "--save-images", "--out", str(ref)]) == 0
    m = json.loads((ref / "metrics.json").read_text())
    assert m["n_images"] == 12 and "alignment" not in m and not (ref / "readback.jsonl").exists()
    assert len(list((ref / "images").glob("*.png"))) == 12

    out = tmp_path / "student"
    assert main(["eval", "--model", "nano-student", "--prompts", str(prompts), "--per-prompt", "4",
                 "--clip", str(scorers / "clip"), "--fid-inception", str(scorers / "inception.pt"),
                 "--fid-reference", str(ref / "images"), "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    r = json.loads((out / "metrics.json").read_text())
    assert 0 <= r["clip_score"] <= 100 and r["fid"] is not None and r["fid"] > 0
    # the reference against itself: FID 0 (the same features)
    same = tmp_path / "same"
    assert main(["eval", "--model", "nano-teacher", "--prompts", str(prompts), "--per-prompt", "4", "--steps", "4",
                 "--fid-inception", str(scorers / "inception.pt"), "--fid-reference", str(ref / "images"),
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(same)]) == 0
    assert abs(json.loads((same / "metrics.json").read_text())["fid"]) < 1e-3


def test_clip_score_is_the_clipped_cosine_times_100(scorers):
    from transformers import AutoTokenizer, CLIPModel

    from ladd.evaluation.real_metrics import ClipScorer, _embedding

    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    texts = ["a red circle", "two squares", "a cross"]
    got = ClipScorer(scorers / "clip").scores(images, texts)
    model = CLIPModel.from_pretrained(scorers / "clip").eval()
    tok = AutoTokenizer.from_pretrained(scorers / "clip")
    from transformers import CLIPImageProcessor

    px = CLIPImageProcessor.from_pretrained(scorers / "clip")(images=list(images), return_tensors="pt")
    with torch.no_grad():
        i = _embedding(model.get_image_features(pixel_values=px["pixel_values"]))
        t = _embedding(model.get_text_features(**tok(texts, padding=True, return_tensors="pt")))
    want = 100 * torch.nn.functional.cosine_similarity(i, t, dim=-1).clamp(min=0)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--fid-inception", "{s}/inception.pt"], "needs --fid-reference"),
    (["--fid-inception", "{s}/missing.pt", "--fid-reference", "{t}"], "does not exist"),
    (["--fid-inception", "{s}/clip/config.json", "--fid-reference", "{t}"], "not a TorchScript file"),
    (["--clip", "{t}"], "not a CLIP model folder"),
    (["--fid-inception", "{s}/inception.pt", "--fid-reference", "{t}/nothing"], "not a folder of images"),
])
def test_bad_scorer_inputs_fail_before_generating(tmp_path, scorers, capsys, args, message):
    prompts = _prompts(tmp_path)
    out = tmp_path / "o"
    args = [a.format(s=scorers, t=tmp_path) for a in args]
    assert main(["eval", "--model", "nano-student", "--prompts", str(prompts), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()
