"""Orbax checkpoints of a run: the latest state (for --resume) and the best one (by validation).

Each checkpoint holds the train state and a JSON record (epoch, step, best validation value so
far, the model config). Orbax writes into a temporary folder and renames it when complete,
so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class RunCheckpoints:
    def __init__(self, workdir: str | Path):
        root = Path(workdir).resolve() / "checkpoints"

        def options(which: str):
            # Both managers save asynchronously at once; with several processes their barriers need
            # distinct names, or one manager's finalize barrier collides with the other's.
            multiprocessing = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=which)
            return ocp.CheckpointManagerOptions(max_to_keep=1, create=True, multiprocessing_options=multiprocessing)

        self.managers = {
            which: ocp.CheckpointManager(root / which, options=options(which)) for which in ("latest", "best")
        }

    def latest_step(self, which: str = "latest") -> int | None:
        return self.managers[which].latest_step()

    def save(self, which: str, step: int, state, record: dict[str, Any]) -> None:
        manager = self.managers[which]
        manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            force=True,
        )

    def restore(self, which: str, target_state) -> tuple[Any, dict[str, Any]]:
        """Restores the newest checkpoint of `which` into the structure of `target_state`."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {which} checkpoint under {manager.directory}")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target_state), record=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["record"])

    def read_record(self, which: str) -> dict[str, Any] | None:
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
        return dict(restored["record"])

    def wait(self) -> None:
        for manager in self.managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()
