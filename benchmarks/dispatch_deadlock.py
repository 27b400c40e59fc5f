"""How many unfinished programs XLA:CPU survives on two CPU devices: the case for `jaxrec/engine/dispatch.py`.

python benchmarks/dispatch_deadlock.py [--in-flight 8,16,31,32,33,64] [--programs 3000] [--tries 2] [--out FILE]

Each case runs, in its own process with two CPU devices, `--programs` independent programs with one
all-reduce each, leaving at most N of them unfinished (N = 0: no bound; every program is dispatched before
any is waited for). A process still running after `--timeout` seconds is in XLA's rendezvous deadlock (XLA
itself aborts it after 40 s more). One JSON line per try: in_flight, finished (bool), seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROGRAMS = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxrec.engine.dispatch import DispatchWindow
    in_flight, programs = int(sys.argv[1]), int(sys.argv[2])
    mesh = Mesh(np.array(jax.devices()), ("d",))
    step = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a @ a.T, "d"), mesh=mesh, in_specs=P("d"),
                                 out_specs=P(), check_vma=False))
    a = jax.device_put(np.ones((128, 256), np.float32), NamedSharding(mesh, P("d")))
    window = DispatchWindow(in_flight) if in_flight else None
    outputs = []
    for _ in range(programs):
        outputs.append(step(a))
        if window is not None:
            window.push(outputs[-1])
    jax.block_until_ready(outputs)
    print("finished")
    """
)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", default="8,16,31,32,33,64,0")
    parser.add_argument("--programs", type=int, default=3000)
    parser.add_argument("--tries", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    for in_flight in [int(x) for x in args.in_flight.split(",")]:
        for attempt in range(args.tries):
            start = time.perf_counter()
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", PROGRAMS, str(in_flight), str(args.programs)],
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    env=env,
                )
                finished = proc.returncode == 0 and "finished" in proc.stdout
            except subprocess.TimeoutExpired:
                finished = False
            record = {
                "in_flight": in_flight or "unbounded",
                "try": attempt,
                "programs": args.programs,
                "finished": finished,
                "seconds": round(time.perf_counter() - start, 2),
                "cpu": cpu_model(),
                "cores": len(os.sched_getaffinity(0)),
            }
            line = json.dumps(record)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
