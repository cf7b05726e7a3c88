"""Starting stage processes and waiting for them: the whole job of a launcher.

Children are started with the `spawn` method (safe with torch and threads), each with a
logging prefix and a bounded number of torch threads so that N processes on a small machine do
not each start one thread per core and fight over them.
"""
from __future__ import annotations

import errno
import importlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pydreamer.logs import configure_logging

log = logging.getLogger(__name__)

USER_ERROR_EXIT = 2  # a child stopped with a sentence the user can act on (as the launchers' exit code)
# a full disk, a full quota, or a file-size limit (`ulimit -f`)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_THREAD_ENV = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')
# glibc returns large freed buffers to the OS at once by default, so every training step
# page-faults its activations back in (measured: 18% of an fp32 learner step); a learner keeps
# them. Other processes allocate little per step and are better off returning memory. glibc reads
# these at process start: they reach children through the environment.
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '4294967296', 'MALLOC_TRIM_THRESHOLD_': '4294967296'}


class StageError(Exception):
    """Why a stage's process stops, as one sentence the user can act on (exit code 2)."""


def disk_full_error(e: OSError) -> StageError | None:
    """The sentence for a write that failed for want of space; None for any other OSError. The
    writers (episode files, checkpoints, uploads) remove their temporary file first and name the
    file they were writing."""
    if e.errno not in _DISK_FULL:
        return None
    where = f' while writing {e.filename}' if e.filename else ''
    return StageError(f'{e.strerror}{where}; nothing half-written was kept: free space there, then resume '
                      f'the run with --resume_id.')


@dataclass
class Child:
    name: str                      # also the log prefix, e.g. 'generator-0' or 'learner'
    target: str                    # 'module:function', imported in the child only: the launcher
                                   # stays free of torch and the models (~250 MB less)
    args: tuple = ()
    ends_job: bool = False         # when this child finishes, the others are stopped and the job ends
    trains: bool = False           # a learner: it gets the cores the other children leave free
    threads: int = 0               # torch threads, set by assign_threads
    process: Any = field(default=None, repr=False)


def assign_threads(children: list[Child], configured: int = 0, others_mostly_idle: bool = False) -> None:
    """Torch threads per child: `configured` for all when > 0. Otherwise, with a learner, each
    other child gets one thread (batch-1 inference gains nothing from more) and the learner the
    remaining cores, or all of them when the others mostly wait (a rate-limited generator); with
    no learner, the cores are shared evenly."""
    cores = os.cpu_count() or 1
    learners = [c for c in children if c.trains]
    for child in children:
        if configured > 0:
            child.threads = configured
        elif not learners:
            child.threads = max(1, cores // len(children))
        elif child.trains:
            busy_others = 0 if others_mostly_idle else len(children) - len(learners)
            child.threads = max(1, (cores - busy_others) // len(learners))
        else:
            child.threads = 1


_stop_requested = False
_launcher_pid: int | None = None


def stop_requested() -> bool:
    """True once the launcher asked this process to stop, or died without asking (this process
    was re-parented); loops check it and then end cleanly."""
    return _stop_requested or (_launcher_pid is not None and os.getppid() != _launcher_pid)


def _request_stop(signum, frame):
    # Only a flag: raising here could interrupt an sqlite transaction and leave the store locked.
    global _stop_requested
    _stop_requested = True


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def resolve_target(target: str):
    """'package.module:function' -> the function."""
    module, _, function = target.partition(':')
    return getattr(importlib.import_module(module), function)


def _child_main(name: str, threads: int, target: str, args: tuple) -> None:
    global _launcher_pid
    _launcher_pid = os.getppid()
    configure_logging(name)
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the launcher, which stops us by SIGTERM
    import torch
    torch.set_num_threads(threads)
    try:
        resolve_target(target)(*args)
    except (StageError, OSError) as e:
        error = e if isinstance(e, StageError) else disk_full_error(e)
        if error is None:
            raise
        if stop_requested():  # the launcher is stopping the job for another child's error: a consequence
            log.warning('%s', error)
        else:
            print(f'error: {error}', file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def run_children(children: list[Child], poll_seconds: float = 0.5) -> int:
    """Start the children (threads as set by assign_threads, else 1) and wait.
    Returns 0 on success, 2 when a child stopped with a sentence (StageError), 1 when it failed
    otherwise, 130 on Ctrl-C."""
    ctx = mp.get_context('spawn')
    saved_env = {k: os.environ.get(k) for k in (*_THREAD_ENV, *MALLOC_ENV)}
    try:
        for child in children:
            threads = max(1, child.threads)
            os.environ.update({k: str(threads) for k in _THREAD_ENV})
            for key, value in MALLOC_ENV.items():  # a user's own setting wins
                _set_env(key, (saved_env[key] or value) if child.trains else saved_env[key])
            child.process = ctx.Process(target=_child_main, name=child.name,
                                        args=(child.name, threads, child.target, child.args))
            child.process.start()
            log.info('Started %s (pid %d, %d torch thread%s).', child.name, child.process.pid,
                     threads, '' if threads == 1 else 's')
    finally:
        for key, value in saved_env.items():
            _set_env(key, value)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` of the launcher stops the job like Ctrl-C
    try:
        return _wait(children, poll_seconds)
    except KeyboardInterrupt:
        log.warning('Interrupted: stopping all processes.')
        _stop(children)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(children: list[Child], poll_seconds: float) -> int:
    running = list(children)
    while running:
        time.sleep(poll_seconds)
        for child in list(running):
            code = child.process.exitcode
            if code is None:
                continue
            running.remove(child)
            if code == USER_ERROR_EXIT:  # it said why in its `error:` sentence
                _stop(running)
                return USER_ERROR_EXIT
            if code != 0:
                log.error('Process %s failed with exit code %d; stopping the others.', child.name, code)
                _stop(running)
                return 1
            log.info('Process %s finished.', child.name)
            if child.ends_job:
                _stop(running)
                return 0
    return 0


def _stop(children: list[Child], timeout: float = 30.0) -> None:
    for child in children:
        if child.process.is_alive():
            child.process.terminate()
    deadline = time.time() + timeout
    for child in children:
        child.process.join(max(0.0, deadline - time.time()))
        if child.process.is_alive():
            log.warning('Process %s did not stop in %.0f s; killing it.', child.name, timeout)
            child.process.kill()
            child.process.join()
