"""When a task's failure is worth a retry: one rule for every task that retries."""

from __future__ import annotations

from typing import Any

from prefect.states import State

from medstack.errors import BAD_INPUT, MedstackError


def is_transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry what a second try may fix (a killed worker, a network disk, a failed download); never bad input or a
    bad config (a :class:`MedstackError` with exit code 2, e.g. a DataError or SmoteError): it fails the same way
    again, and a retry only makes the user wait for the same message (a fold's retry waits 10 s)."""
    try:
        state.result()
    except MedstackError as error:
        return error.exit_code != BAD_INPUT
    except Exception:
        return True
    return False
