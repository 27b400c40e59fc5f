"""The task contract: every task runs through one engine (state, init, optimizer, step), settings a task does not
read are refused, and the package's structure stays as the folders say (no import cycle, small modules).

The first four tests are the bugs the three separate task stacks had drifted into; each fails on the code before
the contract (commit eaaf728)."""

import ast
import dataclasses
import re
import shutil
from pathlib import Path

import jax
import pytest

from jaxrec import config as config_lib
from jaxrec import experiment
from jaxrec.engine import state as state_lib
from jaxrec.engine import train as engine_train
from tests.conftest import REPO

SYNTHETIC = [
    "data.name=synthetic",
    "data.synthetic_users=200",
    "data.synthetic_items=80",
    "data.synthetic_mean_length=15",
    "train.batch_size=16",
    "eval.batch_size=32",
]
PINNERFORMER = [
    "model.name=pinnerformer",
    "model.max_len=12",
    "model.hidden=8",
    "model.num_blocks=1",
    "retrieval.num_sampled=16",
    "retrieval.ks=10,50",
    "eval.select_metric=valid/recall@10",
]
DIN = ["model.name=din", "model.max_len=8", "model.hidden=8", "ctr.mlp=16", "eval.select_metric=valid/auc"]


def _config(*sets: str) -> config_lib.Config:
    return config_lib.apply_overrides(config_lib.Config(), [*SYNTHETIC, *sets])


class _Stop(Exception):
    def __init__(self, state, losses, select):
        super().__init__("stopped")
        self.state, self.losses, self.select = state, losses, select


def _first_steps(monkeypatch, tmp_path, cfg, steps: int = 3) -> _Stop:
    """Runs `cfg` through experiment.run up to the loop, then `steps` steps; returns what the loop was given."""

    def fit(
        cfg, workdir, checkpoints, state, record, train_step, batches, steps_per_epoch, evaluate, select, *rest, **kw
    ):
        losses = []
        for _ in range(steps):
            state, metrics = train_step(state, next(batches))
            losses.append(float(metrics["loss"]))
        checkpoints.close()
        raise _Stop(state, losses, select)

    monkeypatch.setattr(engine_train, "fit", fit)
    with pytest.raises(_Stop) as stopped:
        experiment.run(cfg, tmp_path / "run")
    return stopped.value


def test_retrieval_optimizer_applies_weight_decay(monkeypatch, tmp_path):
    plain = _first_steps(monkeypatch, tmp_path / "a", _config(*PINNERFORMER))
    decayed = _first_steps(monkeypatch, tmp_path / "b", _config(*PINNERFORMER, "train.weight_decay=0.5"))
    assert plain.losses[0] == decayed.losses[0]  # the same first step: decay acts through the update
    assert plain.losses[1:] != decayed.losses[1:]


def test_retrieval_checkpoint_is_chosen_on_eval_select_metric(monkeypatch, tmp_path):
    cfg = _config(*PINNERFORMER, "eval.select_metric=valid/recall@50")
    assert _first_steps(monkeypatch, tmp_path, cfg).select == "valid/recall@50"


@pytest.mark.parametrize("model", ["pinnerformer", "din"])
@pytest.mark.parametrize("key", ["train.micro_batch=8", "train.loss_normalizer=epoch", "train.length_buckets=none"])
def test_settings_a_task_does_not_read_are_refused(model, key):
    cfg = _config(*(PINNERFORMER if model == "pinnerformer" else DIN), key)
    with pytest.raises(config_lib.ConfigError, match=re.escape(key.split("=")[0])):
        experiment.validate(cfg)


def test_another_tasks_section_is_refused():
    with pytest.raises(config_lib.ConfigError, match=r"retrieval\.num_sampled"):
        experiment.validate(_config("retrieval.num_sampled=7"))  # a sasrec run
    with pytest.raises(config_lib.ConfigError, match=r"ctr\.l2_reg"):
        experiment.validate(_config(*PINNERFORMER, "ctr.l2_reg=0.1"))


@pytest.mark.parametrize("sets", [PINNERFORMER, DIN], ids=["retrieval", "ctr"])
def test_item_tables_are_created_sharded(monkeypatch, tmp_path, sets):
    """The init is one jit whose outputs are already sharded: no whole item table on one device first."""
    jit_calls = []
    real_jit = jax.jit

    def recording_jit(fn, **kwargs):
        jit_calls.append(kwargs.get("out_shardings"))
        return real_jit(fn, **kwargs)

    monkeypatch.setattr(state_lib, "jax", dataclasses.replace(_JaxProxy(), jit=recording_jit))
    stopped = _first_steps(monkeypatch, tmp_path, _config(*sets, "mesh.data=2", "mesh.model=2"), steps=1)
    assert len(jit_calls) == 1 and jit_calls[0] is not None  # the init, with its out_shardings
    tables = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(jit_calls[0].params)
        if re.search(r"item", jax.tree_util.keystr(path))
    ]
    assert tables and all(t.spec[0] == "model" for t in tables)
    for path, leaf in jax.tree_util.tree_leaves_with_path(stopped.state.params):
        if re.search(r"item", jax.tree_util.keystr(path)):
            assert leaf.sharding.spec[0] == "model", path


@dataclasses.dataclass
class _JaxProxy:
    """`jax` as engine.state sees it, with `jit` replaceable."""

    jit: object = None

    def __getattr__(self, name):
        return getattr(jax, name)


def test_run_written_before_the_task_contract_stops_with_one_line(tmp_path, capsys):
    import train

    workdir = tmp_path / "old"
    shutil.copytree(REPO / "tests/fixtures/run_before_task_contract", workdir)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    code = train.main(
        ["--config", "configs/sasrec_synthetic.py", "--workdir", str(workdir), "--resume"]
        + [f"--set={s}" for s in ("train.num_epochs=1", "data.synthetic_users=200", "model.max_len=10")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "cannot be resumed by this version of jaxrec" in err[0], err
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before  # nothing written


def _imports(path: Path, package: str) -> set[str]:
    """The jaxrec modules `path` imports, at any level of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("jaxrec")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxrec"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _module_graph() -> dict[str, set[str]]:
    root = REPO / "jaxrec"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    return {name: {m for m in _imports(path, "jaxrec") if m in modules} for name, path in modules.items()}


def test_no_import_cycle_in_the_package():
    graph = _module_graph()
    # A package's __init__ re-exporting its modules is no cycle: a module importing its own package is.
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if dep == node or node.startswith(dep + "."):
                continue
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_dependencies_point_one_way():
    """engine imports no task or model; ops no config, engine, task or model; models no data or task; config no
    model (it reads the registry's dict, jaxrec.registry, which the models fill)."""
    graph = _module_graph()
    rules = {
        "jaxrec.engine": ("jaxrec.tasks", "jaxrec.models", "jaxrec.data"),
        "jaxrec.ops": ("jaxrec.engine", "jaxrec.tasks", "jaxrec.models", "jaxrec.config", "jaxrec.data"),
        "jaxrec.models": ("jaxrec.data", "jaxrec.tasks", "jaxrec.engine"),
        "jaxrec.data": ("jaxrec.tasks", "jaxrec.models", "jaxrec.engine"),
        "jaxrec.config": ("jaxrec.models", "jaxrec.tasks", "jaxrec.engine", "jaxrec.data"),
        "jaxrec.registry": ("jaxrec.",),
    }
    wrong = [
        f"{module} imports {dep}"
        for module, deps in graph.items()
        for prefix, banned in rules.items()
        if module.startswith(prefix)
        for dep in deps
        if dep.startswith(banned)
    ]
    assert not wrong, wrong


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "jaxrec").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def test_one_train_state_and_one_optimizer_factory():
    sources = {p: p.read_text() for p in (REPO / "jaxrec").rglob("*.py")}
    states = [str(p) for p, s in sources.items() if re.search(r"@flax\.struct\.dataclass\s+class \w*State\b", s)]
    optimizers = [str(p) for p, s in sources.items() if re.search(r"^def make_optimizer\(", s, re.M)]
    assert len(states) == 1 and states[0].endswith("engine/state.py"), states
    assert len(optimizers) == 1 and optimizers[0].endswith("engine/state.py"), optimizers


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_every_shipped_config_passes_its_task(path):
    import train

    task = experiment.validate(train.load_config(str(path)))
    assert task.name in ("next_item", "retrieval", "ctr")
