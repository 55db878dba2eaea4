"""The compact console of `eliq materialize`: structured step events become a few lines."""

from __future__ import annotations

import contextlib
import io

import dagster as dg

from eliq_pipeline.defs.console import LOGGER_NAME, console_run_config, eliq_console_logger, quiet_libraries


@dg.op
def chatty(context) -> int:
    for i in range(50):
        context.log.info(f"item {i}/50")
    context.log.warning("a positive was skipped")
    return 1


@dg.op
def broken(context, _value: int) -> None:
    raise ValueError("manifest.csv row 3: no file column\nsecond line of detail")


@dg.job(logger_defs={LOGGER_NAME: eliq_console_logger})
def two_steps() -> None:
    broken(chatty())


def _run(verbose: bool) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), dg.instance_for_test() as instance:
        result = two_steps.execute_in_process(run_config=console_run_config(verbose), instance=instance,
                                              raise_on_error=False)
    assert not result.success
    return out.getvalue().splitlines()


def test_item_lines_stay_out_of_the_console_warnings_and_failures_do_not():
    lines = _run(verbose=False)
    assert lines == ["    chatty: warning: a positive was skipped",
                     "  ✗ broken failed: ValueError: manifest.csv row 3: no file column"]


def test_verbose_prints_every_log_line_and_event():
    lines = _run(verbose=True)
    assert sum("item " in line for line in lines) == 50
    assert any("STEP_START" in line or "Started execution of step" in line for line in lines)
    assert len(lines) > 60


def test_library_progress_bars_are_off_inside_and_restored_after():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    with quiet_libraries():
        assert not diffusers_logging.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    with quiet_libraries(verbose=True):
        assert diffusers_logging.is_progress_bar_enabled()
