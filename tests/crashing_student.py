"""A student plug-in that kills its own process: fault injection for the rollout-worker tests.

Selected like any student (``student=custom student._target_=tests.crashing_student.CrashingStudent``); the Ray
workers import it through ``PYTHONPATH`` in ``ray.runtime_env``.
"""

import os
import signal

from envs.students.scripted import ScriptedStudent


class CrashingStudent:
    """The scripted student, except that its ``crash_on``-th ``reply_batch`` call in a process kills that process.

    Args:
        marker: A file path. Without ``always``, only the first process to reach the crash point
            creates it and dies; every later one (a restarted worker included) carries on.
        crash_on: Which call in a process kills it (1 is the reset's first reply; 2 falls inside
            the first turn's collection, after sampling).
        always: Die at that call in every process, so the worker keeps failing.
        **scripted: Passed to ``ScriptedStudent``.
    """

    def __init__(self, marker: str, crash_on: int = 2, always: bool = False, **scripted):
        self.inner = ScriptedStudent(**scripted)
        self.marker, self.crash_on, self.always = marker, int(crash_on), bool(always)
        self.calls = 0

    def reply_batch(self, contexts):
        self.calls += 1
        if self.calls == self.crash_on and (self.always or self._claim()):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.reply_batch(contexts)

    def _claim(self) -> bool:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False
