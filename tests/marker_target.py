"""A callable that leaves a file behind: proof that a config's ``_target_`` was called.

The saved-config tests name it (as an unregistered plug-in) in a run folder's ``config.yaml`` and
check that no entry point ever calls it.
"""

from pathlib import Path


def touch(marker: str, **_) -> dict:
    """Creates ``marker`` and returns an empty dict."""
    Path(marker).touch()
    return {}
