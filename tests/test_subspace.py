"""Subspace analysis: cosine distances per block matrix and layer, table, PNG, one-line errors."""
import json
from dataclasses import asdict

import pytest
import torch

from related import subspace
from common import UsageError
from checkpoint import save_checkpoint
from model import GPT, PRESETS


def ckpt(model, **extra):
    return dict(model={k: v.clone() for k, v in model.state_dict().items()}, model_config=asdict(model.config),
                config=dict(sparsity=0.75), **extra)


def test_distances_table_and_png(tmp_path, capsys):
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"])
    pre = ckpt(model)
    ft = ckpt(model)
    ft["model"]["transformer.h.1.mlp.c_proj.weight"] *= -1          # opposite direction: distance 2
    ft["model"]["transformer.h.0.attn.q_proj.weight"] *= 3.0        # rescaled: distance 0
    w = ft["model"]["transformer.h.0.attn.c_proj.weight"]
    w += 0.5 * w.norm() / w.numel() ** 0.5 * torch.randn_like(w)   # noise: somewhere in between
    ft["model"]["soft_prompt"] = torch.zeros(4, 128)                 # extra parameters are ignored
    save_checkpoint(pre, tmp_path / "pre.pt")
    save_checkpoint(ft, tmp_path / "ft.pt")
    dist = subspace.main([str(tmp_path / "pre.pt"), str(tmp_path / "ft.pt"),
                          "--png", str(tmp_path / "h.png"), f"--json={tmp_path / 'd.json'}"])
    assert list(dist) == ["Q", "K", "V", "O", "FC1", "FC2"] and all(len(v) == 2 for v in dist.values())
    assert dist["FC2"][1] == pytest.approx(2.0)
    assert dist["Q"][0] == pytest.approx(0.0, abs=1e-12)
    assert 0.05 < dist["O"][0] < 0.5
    untouched = [v for label, vs in dist.items() for i, v in enumerate(vs)
                 if (label, i) not in {("FC2", 1), ("Q", 0), ("O", 0)}]
    assert max(abs(v) for v in untouched) < 1e-12
    out = capsys.readouterr().out
    assert "FC2" in out and "2.00e+00" in out
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "d.json").read_text())["distances"]["FC2"][1] == pytest.approx(2.0)


def test_mismatched_checkpoints(tmp_path):
    a = GPT(PRESETS["tiny"])
    b = GPT(PRESETS["tiny"].__class__(**{**asdict(PRESETS["tiny"]), "n_layer": 1}))
    save_checkpoint(ckpt(a), tmp_path / "a.pt")
    save_checkpoint(ckpt(b), tmp_path / "b.pt")
    with pytest.raises(UsageError, match="n_layer"):
        subspace.main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])
    with pytest.raises(UsageError, match="not found"):
        subspace.main([str(tmp_path / "a.pt"), str(tmp_path / "missing.pt")])
