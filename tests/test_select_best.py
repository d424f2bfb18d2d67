"""eval.select_best with eval.select_fd_slack: which validated state is kept (ladd.distill.validate)."""

import json

import pytest

from ladd.distill.config import load_distill_config
from ladd.distill.validate import Validator


def decide(tmp_path, history, slack=0.1):
    """Feed ``(alignment, fd)`` rows in order; returns the iterations kept after each."""
    cfg = load_distill_config("configs/tiny.yaml", [f"eval.select_fd_slack={slack}", "eval.val_every=1",
                                                    "eval.select_best=true"])
    v = Validator(cfg, tmp_path, None, None)
    kept, old = [], None
    for i, (a, fd) in enumerate(history):
        row = {"step": i, "steps": 4, "alignment": a, "fd": fd}
        with open(tmp_path / "val.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if v._wins(row, old):
            old = row
        kept.append(old["step"])
    return kept


def test_an_alignment_high_at_a_poor_fd_is_not_kept(tmp_path):
    # iteration 1 has the best alignment at FD 11.25 (session 17's pick): kept until iteration 2 reaches FD 7.0,
    # which leaves it outside the slack; iteration 3 is within it (7.5 <= 7.7) and better aligned
    assert decide(tmp_path, [(0.59, 14.7), (0.66, 11.25), (0.62, 7.0), (0.63, 7.5), (0.61, 7.2)]) == [0, 1, 2, 3, 3]


def test_a_lower_fd_evicts_a_kept_state_outside_the_slack(tmp_path):
    assert decide(tmp_path, [(0.60, 10.0), (0.55, 6.0)]) == [0, 1]


def test_without_slack_alignment_alone_decides(tmp_path):
    assert decide(tmp_path, [(0.59, 14.7), (0.66, 11.25), (0.62, 7.0)], slack="null") == [0, 1, 1]


def test_bad_slack_names_the_field():
    from ladd.config import ConfigError

    with pytest.raises(ConfigError, match="select_fd_slack"):
        load_distill_config("configs/tiny.yaml", ["eval.select_fd_slack=-1"])


def test_validation_curves_of_several_runs_in_one_plot(tmp_path):
    import json

    import pytest

    from ladd.distill.validate import plot_runs

    for name, shift in (("a", 0.0), ("b", 0.05)):
        (tmp_path / name).mkdir()
        rows = [{"step": it, "steps": s, "alignment": 0.5 + shift + it / 1e4, "fd": 9 - it / 200}
                for it in (100, 200, 300) for s in (1, 4)]
        (tmp_path / name / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_runs({"a": tmp_path / "a", "b": tmp_path / "b" / "val.jsonl"}, tmp_path / "out" / "curves.png")
    assert png.stat().st_size > 5000
    with pytest.raises(FileNotFoundError, match="eval.val_every"):
        plot_runs({"c": tmp_path / "missing"}, tmp_path / "x.png")
