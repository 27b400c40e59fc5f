"""Device mesh, logical-axis rules, and the shardings of train states and batches.

The only module that names physical mesh axes. Two axes:
  data   splits the batch (data parallelism; with `mesh.fsdp` also the item table's rows)
  model  splits the item axis of item tables (vocabulary parallelism); hidden sizes are never split,
         since they are small here (50 with one head) and splitting them would only add collectives.

Every parameter gets logical axis names from its model (`nn.with_logical_partitioning` where the model
creates it: an item table says ("item", "embed")); each optimizer-state leaf (Adam's mu and nu) takes its
parameter's, found by path. `logical_rules` is the one table from logical names to mesh axes (maxtext's
`logical_axis_rules`); what no model names is replicated.
The mesh uses Auto axis types (GSPMD propagation): `jax.make_mesh` in jax 0.10 defaults to Explicit axes
(sharding in types), which would force every op of every model to say how its output is sharded; with
Auto axes the models stay mesh-agnostic and only the state, the batch and the vocabulary-parallel losses
(`jaxrec.ops.vocab_parallel`, shard_map) are placed explicitly.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrec.config import ConfigError

log = logging.getLogger("jaxrec")

AXES = ("data", "model")


def logical_rules(fsdp: bool = False) -> dict[str, tuple[str, ...] | None]:
    """Logical axis -> mesh axes. `fsdp`: item rows split over model and data (FSDP-style)."""
    return {
        "batch": ("data",),
        "item": ("model", "data") if fsdp else ("model",),
        "embed": None,
        "seq": None,
        "user": None,
        "mlp": None,
    }


def cpu_device_count(cfg, one_device: bool = False) -> int:
    """How many CPU devices `configure_cpu_devices` makes for `cfg`: `mesh.cpu_devices`, or with 0 the
    host's cores (at most 8) reduced until it divides the batch sizes the data axis must split; one when
    `one_device` (a task that gains nothing from the split, see `Task.one_cpu_device`)."""
    if cfg.mesh.cpu_devices:
        return cfg.mesh.cpu_devices
    if one_device:
        return 1
    count = min(len(os.sched_getaffinity(0)), 8)
    sizes = [cfg.train.batch_size, cfg.eval.batch_size] + ([cfg.train.micro_batch] if cfg.train.micro_batch else [])
    while count > 1 and any(size % count for size in sizes):
        count -= 1
    return count


def configure_cpu_devices(cfg, one_device: bool = False) -> int | None:
    """Splits the CPU backend into `cpu_device_count(cfg, one_device)` devices; call before JAX starts a backend.

    Why: XLA:CPU runs a batched matmul of attention's shape (B x 200 x 200 x 50) on one core, and most
    of a SASRec step is such matmuls, so one device leaves the other cores idle; one device per core,
    with the batch split over them by the mesh's data axis, uses them all (the same update: the
    mesh tests check that a data-parallel step equals the one-device step). Returns the count set, or
    None when it was left alone: XLA_FLAGS already forces a count, or a backend has already started
    (as in the tests, which make their own devices). GPU and TPU backends ignore the setting.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    count = cpu_device_count(cfg, one_device)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialised: keep the devices they have
        return None
    return count


def make_mesh(data: int = 0, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over the first data x model of `devices` (default: all devices).

    data = 0 takes every available device not used by `model`; $JAXREC_NUM_DEVICES, when set, caps
    how many devices that default takes (the tests set it to 1: their 8 host devices are for the mesh
    tests, which ask for their sizes explicitly). Devices are ordered as `jax.devices()` lists them
    (process by process), so each process's devices form a contiguous block of the data axis.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or data < 0:
        raise ValueError(f"mesh sizes must be positive (data={data}, model={model})")
    if data == 0:
        available = min(len(devices), int(os.environ.get("JAXREC_NUM_DEVICES") or len(devices)))
        if available % model:
            raise ValueError(f"mesh.model={model} does not divide the {available} available devices")
        data = available // model
    if data * model > len(devices):
        raise ValueError(f"mesh {data} x {model} needs {data * model} devices, found {len(devices)}")
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), AXES)


def path_string(path) -> str:
    """'attention_0/query/kernel' from a jax key path (dict keys, attributes, sequence indices)."""
    parts = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
    return "/".join(parts)


def mesh_spec(logical: tuple[str | None, ...], path: str, shape: tuple[int, ...], mesh: Mesh, fsdp: bool = False):
    """The PartitionSpec of a leaf of `shape` whose dimensions have the `logical` names (`logical_rules`);
    raises when a sharded dimension does not divide by its mesh axes."""
    rules = logical_rules(fsdp)
    spec = []
    for dim, name in zip(shape, logical):
        mesh_axes = rules.get(name) if name else None
        mesh_axes = tuple(a for a in (mesh_axes or ()) if mesh.shape[a] > 1)  # size-1 axes: nothing to split
        if not mesh_axes:
            spec.append(None)
            continue
        shards = int(np.prod([mesh.shape[a] for a in mesh_axes]))
        if dim % shards:
            raise ValueError(
                f"{path}: dimension {dim} ({name}) does not divide into {shards} shards over {mesh_axes}; "
                "item tables are padded to a multiple of 128 rows, "
                "so use a mesh.model (x data with fsdp) that divides 128"
            )
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def param_axes_by_path(param_axes) -> dict[str, tuple[str | None, ...]]:
    """'path/of/param' -> its logical axes, from a tree of logical PartitionSpecs (`nn.get_partition_spec`
    of the model's variables; leaves the model did not name are skipped)."""
    found = {}
    leaves = jax.tree_util.tree_leaves_with_path(param_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for path, spec in leaves:
        if isinstance(spec, PartitionSpec) and len(spec):
            found[path_string(path)] = tuple(spec)
    return found


def state_shardings(state, param_axes, mesh: Mesh, fsdp: bool = False):
    """NamedSharding for every leaf of a (possibly abstract) train state.

    A parameter takes its logical axes from `param_axes` (a tree of logical PartitionSpecs shaped like
    `state.params`); an optimizer-state leaf takes those of the parameter its path ends with (Adam's
    opt_state/0/mu/<param path>); everything else is replicated.
    """
    # Longest parameter path first: the most specific match wins.
    by_path = sorted(param_axes_by_path(param_axes).items(), key=lambda item: -len(item[0]))

    def leaf_sharding(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        name = path_string(path)
        logical = next(
            (
                axes
                for param, axes in by_path
                if (name == f"params/{param}" or name.endswith(f"/{param}")) and len(axes) == len(shape)
            ),
            (None,) * len(shape),
        )
        return NamedSharding(mesh, mesh_spec(logical, name, shape, mesh, fsdp))

    return jax.tree_util.tree_map_with_path(leaf_sharding, state)


def params_shardings(params, param_axes, mesh: Mesh, fsdp: bool = False):
    """NamedSharding of every parameter (as `state_shardings` gives them, for a bare parameter tree)."""
    return state_shardings({"params": params}, param_axes, mesh, fsdp)["params"]


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Batch arrays (of any rank >= 1): rows split over `data`, replicated over `model`."""
    return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


def jit_step(step_fn, state, mesh: Mesh):
    """jit(step_fn): the state in and out in its own sharding (donated), batches split over `data`,
    metrics replicated."""
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )


def check_batch_sizes(cfg, mesh: Mesh, single_process: str = "") -> None:
    """Batch sizes must split evenly over the data axis and the processes; `single_process` names a
    trainer that feeds its batches from one process only."""
    if single_process and jax.process_count() > 1:
        raise ConfigError(
            f"{single_process} runs in one process (on any number of its devices), not {jax.process_count()}"
        )
    data = mesh.shape["data"]
    for key, size in (("train.batch_size", cfg.train.batch_size), ("eval.batch_size", cfg.eval.batch_size)):
        if size % data or size % jax.process_count():
            raise ConfigError(
                f"{key}={size} must be divisible by the mesh's data axis ({data} devices) "
                f"and by the {jax.process_count()} processes; set mesh.data or the batch size"
            )
    if cfg.train.micro_batch and cfg.train.micro_batch % data:
        raise ConfigError(f"train.micro_batch={cfg.train.micro_batch} must be divisible by mesh data={data}")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def process_rows(global_rows: int, mesh: Mesh) -> slice:
    """The rows of a global batch that this process supplies (its devices' contiguous block of `data`)."""
    num_processes, index = jax.process_count(), jax.process_index()
    if global_rows % num_processes:
        raise ValueError(f"batch of {global_rows} rows does not split over {num_processes} processes")
    per_process = global_rows // num_processes
    return slice(index * per_process, (index + 1) * per_process)


def put_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays, rows sharded over `data`, from this process's rows (`process_rows`) of every key."""
    out = {}
    for key, value in local_batch.items():
        if isinstance(value, dict):
            out[key] = put_batch(value, mesh)
            continue
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value, global_shape)
    return out


def abstract_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    """ShapeDtypeStructs of a global batch carrying the batch sharding, for ahead-of-time lowering."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=batch_sharding(mesh, np.ndim(x))),
        batch,
    )


def per_device_bytes(tree) -> int:
    """Bytes of `tree`'s arrays held by the most loaded addressable device."""
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return max(totals.values(), default=0)


def memory_report(state, compiled=None) -> dict[str, float]:
    """Parameter and state bytes per device against the totals, and the compiled step's memory analysis."""
    report = {
        "params_bytes_total": float(sum(x.nbytes for x in jax.tree.leaves(state.params))),
        "params_bytes_per_device": float(per_device_bytes(state.params)),
        "state_bytes_per_device": float(per_device_bytes(state)),
    }
    analysis = compiled.memory_analysis() if compiled is not None else None
    if analysis is not None:
        for field in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes"):
            report[f"step_{field.replace('_size_in_bytes', '')}_bytes"] = float(getattr(analysis, field, 0))
    return report


_HLO_ARRAY = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64)\[([\d,]*)\]"
)
_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}


def largest_hlo_values(hlo_text: str, top: int = 3) -> list[tuple[str, str, int]]:
    """The `top` largest arrays an optimized HLO module defines: (instruction, type[shape], bytes).

    A proxy for the largest temporaries (memory_analysis only gives their total): a step's biggest
    intermediate, e.g. a B x L x V logit matrix, shows up here by name and shape.
    """
    found = {}
    for line in hlo_text.splitlines():
        match = _HLO_ARRAY.match(line)
        if not match:
            continue
        name, dtype, dims = match.groups()
        size = int(np.prod([int(d) for d in dims.split(",") if d])) * _HLO_BYTES.get(dtype, 8)
        found[name] = (name, f"{dtype}[{dims}]", size)
    return sorted(found.values(), key=lambda item: -item[2])[:top]


def to_host(x) -> np.ndarray:
    """A global array as numpy on every process (gathered across processes when it spans several)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
