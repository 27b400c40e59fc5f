"""docs/adding_a_model.md, run as written: its module and registry line, then two training steps through
train.py's entry point with the command the page gives (smaller data)."""

import json
import re
import shlex
import sys
import types

import pytest

from jaxrec import models
from tests.conftest import REPO

PAGE = REPO / "docs" / "adding_a_model.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), re.S)


@pytest.fixture
def meanpool(monkeypatch):
    """The page's module, imported as jaxrec.models.meanpool, and registered as its registry line says."""
    module = types.ModuleType("jaxrec.models.meanpool")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_blocks("python")[0], str(PAGE), "exec"), module.__dict__)
    registry_line = re.search(r'^\s*("meanpool": MeanPool),$', _blocks("python")[1], re.M).group(1)
    name = registry_line.split(":")[0].strip('"')
    monkeypatch.setitem(models.MODELS, name, module.MeanPool)
    return module


def test_the_documented_model_trains_through_train_py(meanpool, tmp_path, capsys):
    import train

    command = shlex.split(_blocks("bash")[0].replace("\\\n", " "))
    assert command[:2] == ["python", "train.py"]
    args = command[2:]
    args[args.index("--workdir") + 1] = str(tmp_path / "run")
    args += [
        f"--set={s}"
        for s in (
            "data.synthetic_users=64",
            "train.batch_size=32",
            "train.length_buckets=none",
            "train.num_epochs=1",
            "eval.every_epochs=1",
        )
    ]
    assert train.main(args) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["name"] == "meanpool" and config["model"]["scale"] == 2.0
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert line["step"] == 2  # two steps: 64 users in batches of 32
    printed = json.loads(capsys.readouterr().out)
    assert 0.0 <= printed["test/ndcg@10_full"] <= 1.0


def test_the_documented_checks_refuse_bad_values(meanpool):
    from jaxrec import config as config_lib
    from jaxrec import experiment

    cfg = config_lib.apply_overrides(config_lib.Config(), ["model.name=meanpool", "model.scale=-1"])
    with pytest.raises(config_lib.ConfigError, match="model.scale must be > 0"):
        experiment.validate(cfg)
    with pytest.raises(config_lib.ConfigError, match="num_blocks"):
        config_lib.apply_overrides(cfg, ["model.num_blocks=3"])
