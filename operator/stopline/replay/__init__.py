"""`stopline replay`: run a TrainingJob's criteria over recorded learning curves, as if they were a sweep.

A job is named by a `job` column, or by `config` as public curve collections name it; with a `task`
column, each task is a sweep of its own (a config is unique within its task only), replayed and summed
up on its own, then over all tasks as docs/policy.md does. `epoch_seconds` is read as `seconds`.

One room each: `curves` reads the hostile input (the curves CSV, the job manifest), `sweep` replays the
jobs and sums a sweep up (`resumes` runs them through the engine, with spec.resumePolicy asking the
study's resume rule as a job ends), `render` writes the table and `page` the HTML page (`--html`); `live`
reads a live study from its TrainingJobs' status (`stopline study`) into the same table, JSON and page.
"""

from stopline.replay.curves import Curve, ReplayError, load_curves, load_job
from stopline.replay.page import render_html, render_page, write_html
from stopline.replay.render import render_table
from stopline.replay.resumes import Resume
from stopline.replay.sweep import (
    PEER_COMPARISONS_MAX,
    Best,
    JobResult,
    Replay,
    Sweep,
    replay,
    replay_job,
)

__all__ = [
    "PEER_COMPARISONS_MAX",
    "Best",
    "Curve",
    "JobResult",
    "Replay",
    "ReplayError",
    "Resume",
    "Sweep",
    "load_curves",
    "load_job",
    "render_html",
    "render_page",
    "render_table",
    "replay",
    "replay_job",
    "write_html",
]
