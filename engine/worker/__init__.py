"""Workers: claim runnable steps with leases, run them, report back; plus the periodic maintenance sweeps."""

from engine.worker.loop import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
