"""stopline_trainer: the in-pod half of stopline — metrics, the stop endpoint, agreed stops, checkpoints.

run = stopline_trainer.start()          # env contract in, /metrics + /stop served, SIGTERM handled
ckpt = run.resume()                     # latest checkpoint or None
...  run.report(epoch, step, val_loss=v)
...  if run.should_stop(): break        # same step on every rank
run.save({"model": model.state_dict()}); run.close()

The base install imports without torch; save(), resume() and process groups need stopline-trainer[torch].
"""

from .checkpoint import Checkpoint, CorruptCheckpoint, Manifest
from .config import Config, ConfigError
from .extras import MissingExtra
from .run import Run, start

__all__ = [
    "Checkpoint",
    "Config",
    "ConfigError",
    "CorruptCheckpoint",
    "Manifest",
    "MissingExtra",
    "Run",
    "start",
]
