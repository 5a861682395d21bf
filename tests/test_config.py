"""common.parse_config: config files, then --key=value overrides, with type checks; and the
paper's config files."""
import pytest

from common import UsageError, parse_config
from tests.conftest import ROOT


def test_config_files_then_overrides_with_type_checks(tmp_path):
    defaults = dict(model="tiny", sparsity=0.0, max_iters=10, compile=False)
    cfgfile = tmp_path / "c.py"
    cfgfile.write_text("model = 'mini'\nmax_iters = 100\n")
    cfg, overrides = parse_config(defaults, [str(cfgfile), "--max_iters=5", "--sparsity=1", "--compile=True"])
    assert cfg == dict(model="mini", sparsity=1.0, max_iters=5, compile=True)
    assert set(overrides) == {"model", "max_iters", "sparsity", "compile"}
    with pytest.raises(UsageError, match="float"):
        parse_config(defaults, ["--sparsity=abc"])
    cfgfile.write_text("n_layers = 3\n")
    with pytest.raises(UsageError, match="unknown config key 'n_layers'"):
        parse_config(defaults, [str(cfgfile)])


def test_key_space_value_bare_bool_flags_and_positional_arguments():
    defaults = dict(model="tiny", sparsity=0.0, compile=False, json="")
    cfg, _ = parse_config(defaults, ["--model", "mini", "--compile", "--json", "out.json", "--sparsity=0.5"])
    assert cfg == dict(model="mini", sparsity=0.5, compile=True, json="out.json")
    assert parse_config(defaults, ["--compile", "false"])[0]["compile"] is False
    with pytest.raises(UsageError, match="--model needs a value"):
        parse_config(defaults, ["--model", "--compile"])
    cfg, _ = parse_config(defaults, ["mini", "--json", "x.json"], positional=("model",))
    assert cfg["model"] == "mini" and cfg["json"] == "x.json"
    with pytest.raises(UsageError, match="unexpected argument"):
        parse_config(defaults, ["mini", "extra"], positional=("model",))


def test_paper_config_files_parse():
    import pretrain
    for name, lr, tokens in (("pretrain_gpt2_small.py", 6e-4, 2.5e9), ("pretrain_gpt3_xl.py", 2e-4, 26e9)):
        cfg, _ = parse_config(pretrain.DEFAULTS, [str(ROOT / "config" / name)])
        pretrain.validate(cfg)
        seqs = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
        assert cfg["learning_rate"] == lr and seqs in (256, 512)
        assert abs(cfg["max_iters"] * seqs * 2048 - tokens) / tokens < 0.001
        assert abs(cfg["warmup_iters"] * seqs * 2048 - 375e6) / 375e6 < 0.002
