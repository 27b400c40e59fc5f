"""Vocabulary parallelism at catalogue scale, on 8 host devices (the script sets the XLA flag itself).

  python benchmarks/scale_bench.py [--part all|ce|train] [--out FILE]
  python benchmarks/scale_bench.py --smoke      # tiny sizes, seconds (tests/ops/test_vocab_parallel.py runs it)

Part "ce": full-catalogue softmax CE, forward + backward (w.r.t. queries and table), the table P("model", None):
  gspmd_full       losses.softmax_ce_full under jit; XLA partitions the N x V logits itself
  gspmd_chunked    losses.softmax_ce_chunked under jit (to see what GSPMD does with a scan over a sharded table)
  shard_map_full   vocab_parallel.sharded_softmax_ce(chunk=0)
  shard_map_chunk  vocab_parallel.sharded_softmax_ce(chunk=--ce-chunk)
Each: loss and table-gradient difference from gspmd_full (checked before timing), compile seconds, median step
time, the compiled program's memory_analysis() (per device) and whether its HLO all-gathers the whole table.

Part "train": one sampled-softmax training step, Adam on every parameter (the items x 64 table, a user embedding
table and a two-layer user tower), candidates = the global batch's positives (in-batch, all-gathered over "data",
logQ from the Zipf popularity they are drawn with) + --negatives uniform ids, through
vocab_parallel.sharded_sampled_softmax. Layouts: "sharded" = mesh (1, 8), table P("model", None) (1/8 per device);
"replicated" = mesh (8, 1), the same spec over a 1-device "model" axis (a whole copy per device, the batch split 8
ways). Parameters and Adam state are initialised already sharded (jit with out_shardings); cases marked
compile_only are lowered from abstract shapes and only compiled (their memory_analysis is the report).

One JSON line per case. Per-device bytes are those of one device's shard; XLA's figures are per device too.
"""

from __future__ import annotations

import os

_USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = _USER_XLA_FLAGS + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxrec.ops import losses, sampling, vocab_parallel  # noqa: E402

ZIPF = 1.2  # popularity exponent of the synthetic positives

_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "bf16": 2, "f16": 2, "s64": 8, "f64": 8, "u8": 1, "s8": 1}


def make_mesh(data: int, model: int) -> Mesh:
    # Auto axes (GSPMD propagation outside the shard_maps), not jax.make_mesh's Explicit ones.
    return Mesh(np.array(jax.devices()[: data * model]).reshape(data, model), ("data", "model"))


def largest_array(hlo: str) -> tuple[int, str]:
    """Bytes and shape of the largest array any non-parameter instruction of an optimized HLO module produces."""
    best = (0, "")
    for line in hlo.splitlines():
        if "parameter(" in line or "=" not in line:
            continue
        result = line.split("=", 1)[1]
        for dtype, dims in re.findall(r"\b(f32|s32|u32|pred|bf16|f16|s64|f64|u8|s8)\[([\d,]*)\]", result[:200]):
            size = _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
            best = max(best, (size, f"{dtype}[{dims}]"))
    return best


def gathers_table(hlo: str, rows: int, dim: int) -> bool:
    """True if the HLO has an all-gather whose result holds the whole V x D table (in any shape, e.g. C x K x D)."""
    for line in hlo.splitlines():
        if " all-gather(" not in line or "=" not in line:
            continue
        result = line.split("=", 1)[1].split("all-gather(")[0]
        for _, dims in re.findall(r"\b(f32|bf16|f16)\[([\d,]*)\]", result):
            if math.prod(int(d) for d in dims.split(",") if d) >= rows * dim:
                return True
    return False


def cost_fields(compiled) -> dict:
    """XLA's static cost estimate of one device's program (FLOPs, bytes accessed)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list of one dict in older jax
    if not cost:
        return {}
    return {
        "xla_flops_per_device": float(cost.get("flops", 0.0)),
        "xla_bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
    }


def memory_fields(compiled) -> dict:
    mem = compiled.memory_analysis()
    if mem is None:
        return {}
    return {
        "temp_bytes_per_device": int(mem.temp_size_in_bytes),
        "argument_bytes_per_device": int(mem.argument_size_in_bytes),
        "output_bytes_per_device": int(mem.output_size_in_bytes),
        "alias_bytes_per_device": int(mem.alias_size_in_bytes),
    }


def emit(record: dict, out: str) -> None:
    record = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "devices": jax.device_count(), **record}
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------- part ce


def ce_part(args) -> list[dict]:
    n, rows, dim, chunk = args.ce_rows, args.ce_vocab, args.dim, args.ce_chunk
    num_items = rows - 72  # the last rows are vocabulary padding
    mesh = make_mesh(*args.ce_mesh)
    h_sh, t_sh, y_sh = (NamedSharding(mesh, s) for s in (P("data", None), P("model", None), P("data")))
    keys = jax.random.split(jax.random.key(0), 3)
    h = jax.device_put(jax.random.normal(keys[0], (n, dim)) * 0.3, h_sh)
    table = jax.jit(lambda k: jax.random.normal(k, (rows, dim)) * 0.3, out_shardings=t_sh)(keys[1])
    targets = jax.device_put(jax.random.randint(keys[2], (n,), 0, num_items + 1), y_sh)
    cases = {
        "gspmd_full": lambda h, t, y: losses.softmax_ce_full(h, t, y, num_items)[0],
        "gspmd_chunked": lambda h, t, y: losses.softmax_ce_chunked(h, t, y, num_items, chunk=chunk)[0],
        "shard_map_full": lambda h, t, y: vocab_parallel.sharded_softmax_ce(h, t, y, num_items, mesh)[0],
        "shard_map_chunk": lambda h, t, y: vocab_parallel.sharded_softmax_ce(h, t, y, num_items, mesh, chunk=chunk)[0],
    }
    records, compiled, reference = {}, {}, None
    for name, loss_fn in cases.items():
        step = jax.jit(
            jax.value_and_grad(loss_fn, argnums=(0, 1)),
            in_shardings=(h_sh, t_sh, y_sh),
            out_shardings=(NamedSharding(mesh, P()), (h_sh, t_sh)),
        )
        start = time.perf_counter()
        compiled[name] = step.lower(h, table, targets).compile()
        compile_s = time.perf_counter() - start
        hlo = compiled[name].as_text()
        loss, (_, g_table) = jax.block_until_ready(compiled[name](h, table, targets))  # also the warm-up
        if reference is None:
            reference = (float(loss), np.asarray(g_table))
        big_bytes, big_shape = largest_array(hlo)
        records[name] = {
            "part": "ce",
            "case": name,
            "rows_N": n,
            "vocab_V": rows,
            "dim": dim,
            "chunk": chunk if "chunk" in name else 0,
            "mesh": list(args.ce_mesh),
            "dtype": "float32",
            "loss_diff_vs_gspmd_full": abs(float(loss) - reference[0]),
            "table_grad_max_diff_vs_gspmd_full": float(np.abs(np.asarray(g_table) - reference[1]).max()),
            "compile_s": round(compile_s, 3),
            "hlo_all_gathers_whole_table": gathers_table(hlo, rows, dim),
            "largest_hlo_array_bytes": big_bytes,
            "largest_hlo_array": big_shape,
            "logits_bytes_full_NxV": 4 * n * rows,
            **cost_fields(compiled[name]),
            **memory_fields(compiled[name]),
        }
        del loss, g_table
    # Timed round-robin, one step of each case per round: on a shared machine, load changes hit every case alike.
    times = {name: [] for name in cases}
    for _ in range(args.ce_repeats):
        for name in cases:
            start = time.perf_counter()
            jax.block_until_ready(compiled[name](h, table, targets))
            times[name].append(time.perf_counter() - start)
    for name, record in records.items():
        record.update(
            step_ms=round(1000 * float(np.median(times[name])), 3),
            step_ms_min=round(1000 * min(times[name]), 3),
            repeats=args.ce_repeats,
            note="forward + backward (queries and table); median of round-robin repeats after a warm-up",
        )
        emit(record, args.out)
    return list(records.values())


# ---------------------------------------------------------------- part train


def zipf_log_p(ids, num_items: int):
    """log p of the clipped Zipf the positives are drawn from (the clipped tail mass is ignored)."""
    norm = float(np.sum(np.arange(1, min(num_items, 10**6) + 1, dtype=np.float64) ** -ZIPF))
    if num_items > 10**6:  # the rest of the harmonic sum, by the integral
        norm += ((10**6 + 0.5) ** (1 - ZIPF) - (num_items + 0.5) ** (1 - ZIPF)) / (ZIPF - 1)
    return -ZIPF * jnp.log(ids.astype(jnp.float32)) - math.log(norm)


def init_params(key, rows: int, dim: int, users: int):
    k = jax.random.split(key, 4)
    return {
        "items_VxD": jax.random.normal(k[0], (rows, dim), jnp.float32) * 0.05,
        "users_UxD": jax.random.normal(k[1], (users, dim), jnp.float32) * 0.05,
        "w1_DxD": jax.random.normal(k[2], (dim, dim), jnp.float32) / math.sqrt(dim),
        "b1_D": jnp.zeros((dim,), jnp.float32),
        "w2_DxD": jax.random.normal(k[3], (dim, dim), jnp.float32) / math.sqrt(dim),
        "b2_D": jnp.zeros((dim,), jnp.float32),
    }


def user_tower(params, user_ids_B):
    e_BxD = params["users_UxD"][user_ids_B]
    return e_BxD + jax.nn.gelu(e_BxD @ params["w1_DxD"] + params["b1_D"]) @ params["w2_DxD"] + params["b2_D"]


def state_shardings(mesh, abstract_state, rows: int, dim: int):
    """The item table and its Adam moments P("model", None); everything else replicated."""

    def one(leaf):
        spec = P("model", None) if tuple(leaf.shape) == (rows, dim) else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_state)


def make_train_step(tx, mesh, num_items: int, negatives: int, temperature: float):
    def loss_fn(params, batch, key):
        query_BxD = user_tower(params, batch["user_ids_B"])
        positives_B = batch["positives_B"]
        global_batch = positives_B.shape[0]
        # In-batch Q: the expected count of x among the global batch's positives, n p(x) (sampling.in_batch).
        pos_log_q_B = math.log(global_batch) + zipf_log_p(positives_B, num_items)
        uniform_ids_M, uniform_log_q_M = sampling.uniform(key, negatives, num_items)
        loss, aux = vocab_parallel.sharded_sampled_softmax(
            query_BxD,
            params["items_VxD"],
            positives_B,
            pos_log_q_B,
            mesh,
            extra_ids_M=uniform_ids_M,
            extra_log_q_M=uniform_log_q_M,
            temperature=temperature,
        )
        return loss, aux

    def train_step(state, batch):
        params, opt_state, step, rng = state
        key = jax.random.fold_in(rng, step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, step + 1, rng), {"loss": loss, "accidental_hits": aux["accidental_hits"]}

    return train_step


def per_device_bytes(tree, shardings) -> int:
    return sum(
        math.prod(s.shard_shape(tuple(x.shape))) * x.dtype.itemsize
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True)
    )


def total_bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def train_case(args, items: int, layout: str, compile_only: bool) -> dict:
    rows = -(-(items + 1) // 1024) * 1024  # padded to a multiple of (8 shards x 128)
    dim, batch_size = args.dim, args.batch
    mesh = make_mesh(1, 8) if layout == "sharded" else make_mesh(8, 1)
    shards = mesh.shape["model"]
    tx = optax.adam(1e-3)

    def init(key):
        params = init_params(key, rows, dim, args.users)
        return params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key_data(jax.random.key(1))

    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = state_shardings(mesh, abstract, rows, dim)
    batch_sh = {"user_ids_B": NamedSharding(mesh, P("data")), "positives_B": NamedSharding(mesh, P("data"))}

    raw_step = make_train_step(tx, mesh, items, args.negatives, args.temperature)

    def step_fn(state, batch):
        params, opt_state, step, rng_data = state
        new, metrics = raw_step((params, opt_state, step, jax.random.wrap_key_data(rng_data)), batch)
        return (new[0], new[1], new[2], jax.random.key_data(new[3])), metrics

    step = jax.jit(step_fn, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None), donate_argnums=0)
    abstract_batch = {k: jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=s) for k, s in batch_sh.items()}
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    start = time.perf_counter()
    compiled = step.lower(abstract_state, abstract_batch).compile()
    compile_s = time.perf_counter() - start
    big_bytes, big_shape = largest_array(compiled.as_text())
    params_abs, opt_abs = abstract[0], abstract[1]
    table_bytes = rows * dim * 4
    record = {
        "part": "train",
        "items": items,
        "table_rows_V": rows,
        "dim": dim,
        "layout": layout,
        "mesh": [mesh.shape["data"], shards],
        "batch": batch_size,
        "uniform_negatives": args.negatives,
        "candidates": batch_size + args.negatives,
        "users": args.users,
        "dtype": "float32",
        "compile_only": compile_only,
        "compile_s": round(compile_s, 3),
        "param_bytes_total": total_bytes(params_abs),
        "param_bytes_per_device": per_device_bytes(params_abs, shardings[0]),
        "table_bytes_total": table_bytes,
        "table_bytes_total_over_shards": table_bytes // shards,
        "opt_state_bytes_per_device": per_device_bytes(opt_abs, shardings[1]),
        "largest_hlo_array_bytes": big_bytes,
        "largest_hlo_array": big_shape,
        **memory_fields(compiled),
    }
    mem = compiled.memory_analysis()
    if mem is not None:
        per_device = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        per_device -= mem.alias_size_in_bytes  # donated state: outputs reuse the arguments' buffers
        record["xla_peak_bytes_per_device"] = int(per_device)
        record["xla_peak_bytes_all_devices"] = int(per_device * jax.device_count())
    if not compile_only:
        start = time.perf_counter()
        state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
        jax.block_until_ready(state)
        record["init_s"] = round(time.perf_counter() - start, 3)
        table = state[0]["items_VxD"]
        record["table_bytes_on_device0"] = int(table.addressable_shards[0].data.nbytes)
        rng = np.random.default_rng(0)
        batches = [
            {
                "user_ids_B": jax.device_put(
                    rng.integers(0, args.users, batch_size).astype(np.int32), batch_sh["user_ids_B"]
                ),
                "positives_B": jax.device_put(
                    np.minimum(rng.zipf(ZIPF, batch_size), items).astype(np.int32), batch_sh["positives_B"]
                ),
            }
            for _ in range(args.repeats + 1)
        ]
        state, metrics = compiled(state, batches[0])  # warm-up
        jax.block_until_ready(metrics)
        first_loss = float(metrics["loss"])
        times = []
        for batch in batches[1:]:
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        record.update(
            step_ms=round(1000 * float(np.median(times)), 3),
            step_ms_min=round(1000 * min(times), 3),
            repeats=len(times),
            first_loss=round(first_loss, 4),
            last_loss=round(float(metrics["loss"]), 4),
            process_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        )
        if not np.isfinite(record["last_loss"]):
            raise FloatingPointError(f"scale_bench: non-finite loss in case {items} {layout}")
        del state, batches
    emit(record, args.out)
    return record


def train_part(args) -> list[dict]:
    if len(args.train_cases) > 1 and not args.smoke:
        return [_case_in_subprocess(args, name) for name in args.case_names]
    return [train_case(args, items, layout, compile_only) for items, layout, compile_only in args.train_cases]


def _case_in_subprocess(args, name: str) -> dict:
    """One case per process: its peak RSS is its own, and a big case's buffers are gone before the next starts."""
    flags = ["--part", "train", "--cases", name, "--out", args.out]
    for flag in ("dim", "batch", "negatives", "users", "temperature", "large", "repeats"):
        flags += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "XLA_FLAGS": _USER_XLA_FLAGS}  # the child adds the device count itself
    result = subprocess.run([sys.executable, __file__, *flags], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"scale_bench case {name} failed:\n{result.stderr[-3000:]}")
    line = result.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return json.loads(line)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "ce", "train"), default="all")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ce-rows", type=int, default=2048, help="CE: query rows N")
    parser.add_argument("--ce-vocab", type=int, default=131072, help="CE: table rows V (padded)")
    parser.add_argument("--ce-chunk", type=int, default=2048, help="CE: chunk rows for the chunked losses")
    parser.add_argument("--ce-mesh", type=int, nargs=2, default=(1, 8), metavar=("DATA", "MODEL"))
    parser.add_argument("--batch", type=int, default=4096, help="train: global batch (queries)")
    parser.add_argument("--negatives", type=int, default=4096, help="train: uniform negatives shared by the batch")
    parser.add_argument("--users", type=int, default=100_000, help="train: user embedding rows")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--large", type=int, default=10**7, help="train: items of the large catalogue")
    parser.add_argument("--cases", default="", help="train: comma-separated subset of the four cases (default all)")
    parser.add_argument("--repeats", type=int, default=5, help="train: timed repeats after one warm-up")
    parser.add_argument("--ce-repeats", type=int, default=3, help="CE: timed repeats after one warm-up")
    parser.add_argument("--out", default="")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    args = parser.parse_args(argv)
    medium = 10**6
    if args.smoke:
        args.dim, args.ce_rows, args.ce_vocab, args.ce_chunk = 16, 64, 2048, 64
        args.batch, args.negatives, args.users, args.repeats, args.ce_repeats = 64, 32, 100, 2, 2
        medium, args.large = 3000, 20000
    cases = {
        "medium_sharded": (medium, "sharded", False),
        "medium_replicated": (medium, "replicated", False),
        "large_sharded": (args.large, "sharded", False),
        "large_replicated": (args.large, "replicated", True),  # ~80 GB over 8 devices at 10^7: compiled, never run
    }
    if args.smoke:  # the other two take the same code paths
        args.cases = args.cases or "medium_sharded,large_replicated"
    names = args.cases.split(",") if args.cases else list(cases)
    unknown = sorted(set(names) - set(cases))
    if unknown:
        raise SystemExit(f"scale_bench: unknown --cases {unknown}; known: {sorted(cases)}")
    args.case_names, args.train_cases = names, [cases[name] for name in names]
    records = []
    if args.part in ("all", "ce"):
        records += ce_part(args)
    if args.part in ("all", "train"):
        records += train_part(args)
    return records


if __name__ == "__main__":
    main()
