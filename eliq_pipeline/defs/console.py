"""What a person sees on the terminal during `eliq materialize` / `make demo`.

Dagster's default console logger prints every framework event and every log line of a step
(hundreds of lines for one era). `eliq materialize` configures this logger instead: one line when
an asset starts, one when it finishes (with its duration), one per asset check result, failures
with their message, and warnings. Progress of long loops is a tqdm bar with ETA (only when stderr
is a terminal), never a line per item. Everything, the per-step log lines included, still goes to
the run's event log (the UI and its compute logs); `eliq materialize -v` prints it all as Dagster
would.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from typing import Callable, Iterator

import dagster as dg
from tqdm.auto import tqdm

LOGGER_NAME = "eliq_console"
# Lines in the event log per progress bar (every 10%): enough to see a step move in the UI.
EVENT_LOG_PROGRESS_LINES = 10


@functools.cache
def _asset_steps() -> frozenset[str]:
    """Step keys of the assets (the other steps are their checks); read when the first event
    arrives, since the asset modules import this one."""
    from eliq_pipeline.definitions import ELIQ_ASSETS

    return frozenset(asset.op.name for asset in ELIQ_ASSETS)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s"


def _say(line: str) -> None:
    tqdm.write(line, file=sys.stdout)  # above a live progress bar, not through it
    sys.stdout.flush()


class StepConsoleHandler(logging.Handler):
    """Turns Dagster's structured step events into the few lines described above."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.DEBUG)
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.line_for(record)
        except Exception:  # a console line must never fail a step
            self.handleError(record)
            return
        if line:
            _say(line)

    def line_for(self, record: logging.LogRecord) -> str | None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        if event is None:  # a step's own log line: shown with -v, or when it is a warning
            if self.verbose or record.levelno >= logging.WARNING:
                level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
                return f"    {step}: {level}{meta.get('orig_message', record.getMessage())}"
            return None
        kind = event.event_type_value
        asset_step = step in _asset_steps()
        if kind == "STEP_START" and asset_step:
            return f"  ▸ {step}"
        if kind == "STEP_SUCCESS" and asset_step:
            return f"  ✓ {step} ({_duration(event.event_specific_data.duration_ms / 1000)})"
        if kind == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            severity = getattr(check.severity, "value", str(check.severity)).lower()
            verdict = "passed" if check.passed else f"FAILED ({severity})"
            return f"    check {check.asset_key.to_user_string()}:{check.check_name} {verdict}"
        if kind == "STEP_FAILURE":
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and error.cause is not None:  # Dagster wraps the step's own error
                error = error.cause
            message = error.message.strip().splitlines()[0] if error is not None and error.message else "see the UI"
            return f"  ✗ {step} failed: {message}"
        if self.verbose:
            return f"    {step or 'run'}: {meta.get('orig_message', record.getMessage())}"
        return None


@dg.logger(
    config_schema={"verbose": dg.Field(bool, default_value=False, description="print every event and log line")},
    description="One line per asset start / finish / check result; progress bars; -v for everything.",
)
def eliq_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger(LOGGER_NAME, level=logging.DEBUG)  # not registered: one per run
    logger.addHandler(StepConsoleHandler(bool(init_context.logger_config["verbose"])))
    return logger


def console_run_config(verbose: bool = False) -> dict:
    """Run config that replaces Dagster's console logger with this one for a run."""
    return {"loggers": {LOGGER_NAME: {"config": {"verbose": verbose}}}}


def progress(context: dg.AssetExecutionContext, what: str, unit: str = "images") -> Callable[[int, int], None]:
    """A `progress(done, total)` callback for a long loop of a step: a bar with rate and ETA on the
    terminal (tqdm; nothing when stderr is not a terminal) and about ten lines in the event log."""
    state: dict = {"bar": None, "logged": -1}

    def update(done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=f"    {what}", unit=f" {unit}", leave=False,
                                      disable=None, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        bar.total = total
        bar.update(done - bar.n)
        tenth = done * EVENT_LOG_PROGRESS_LINES // max(total, 1)
        if tenth > state["logged"] or done >= total:
            state["logged"] = tenth
            context.log.debug(f"{what}: {done}/{total} {unit}")
        if done >= total:
            bar.close()
            state["bar"] = None

    return update


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Silence what the libraries print on their own while steps run in this process: diffusers',
    transformers' and huggingface_hub's progress bars ("Loading pipeline components", "Writing
    model shards"), transformers' info/warning messages, FutureWarning and DeprecationWarning.
    Restored afterwards; `verbose` leaves everything on."""
    if verbose:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    bars = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
            not hub_utils.are_progress_bars_disabled())
    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for enabled, enable in zip(bars, (diffusers_logging.enable_progress_bar, transformers_logging.enable_progress_bar,
                                          hub_utils.enable_progress_bars)):
            if enabled:
                enable()
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
