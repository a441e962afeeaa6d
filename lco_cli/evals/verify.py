"""Answer checking for math benchmarks and rewards, built on math-verify. (~500 lines: the sandboxed worker pool and its wire protocol are one unit.)

Three entry points:

* `extract_boxed(text)` -- the content of the last `\\boxed{...}` / `\\fbox{...}`.
* `check_answer(gold, prediction_text)` -- one check in the calling process.
* `verify_batch(golds, predictions)` -- many checks, robust to inputs that hang or crash.

Why a process pool: math-verify bounds its own work with `signal.alarm`, which (a) only works
in the main thread of the main interpreter -- elsewhere `parse`/`verify` raise ValueError unless
their timeouts are disabled -- and (b) only interrupts Python bytecode, so a long computation
inside a C extension cannot be stopped by it. `verify_batch` therefore runs checks in worker
processes (where each runs in its worker's main thread, so the alarms work) and the parent also
enforces a wall-clock deadline per item, killing and replacing a worker that overruns or dies.
A check that times out or crashes counts as wrong; it never hangs the run.

Workers are fresh interpreters started with `subprocess` (spawn semantics without
multiprocessing's re-import of the caller's `__main__`); they persist between calls.
"""
from __future__ import annotations

import atexit
import collections
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from typing import Callable, Sequence


# math-verify (and sympy under it) load on first use: `lco validate` and `lco --help` never need them.
def parse(*args, **kwargs):
    from math_verify import parse as math_verify_parse

    return math_verify_parse(*args, **kwargs)


def verify(*args, **kwargs):
    from math_verify import verify as math_verify_verify

    return math_verify_verify(*args, **kwargs)


def timeout_exception() -> type[BaseException]:
    from math_verify.errors import TimeoutException

    return TimeoutException


logger = logging.getLogger(__name__)

Result = tuple[str | None, bool]
CheckFn = Callable[[str, str, float], Result]

#: Batches up to this size are checked in-process (auto mode) while no pool is running:
#: starting workers costs about a second, more than a handful of checks.
INPROCESS_MAX_ITEMS = 8
#: Upper bound on the default number of workers ("small": checks are short, and the
#: machine is usually busy with generation).
MAX_DEFAULT_WORKERS = 4
#: A worker must start its interpreter and import math-verify within this many seconds
#: (generous: the machine may be busy with generation).
STARTUP_TIMEOUT_S = 120.0

_BOX_START = re.compile(r"\\(?:boxed|fbox)\b")


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` or `\\fbox{...}` in `text`, else None.

    Braces are matched with nesting (escaped `\\{`, `\\}` do not count). The legacy
    `\\boxed 5` form yields the following token. As in the Qwen2.5-Math evaluation, only the
    *last* box counts: if it is not closed (a truncated generation) the result is None rather
    than an earlier box.
    """
    starts = list(_BOX_START.finditer(text))
    if not starts:
        return None
    pos = starts[-1].end()
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _balanced_group(text, pos + len(rest) - len(stripped))
    if rest[:1].isspace() and stripped:
        # `\boxed 5$`: the token up to whitespace or a closing `$`.
        return re.split(r"[\s$]", stripped, maxsplit=1)[0]
    return None


def _balanced_group(text: str, open_index: int) -> str | None:
    """Content of the `{...}` group opening at `text[open_index]`, None if never closed."""
    depth = 0
    i = open_index
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, e.g. `\{` or `\\`
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
        i += 1
    return None


# --------------------------------------------------------------------------------------------
# One check, in the calling process
# --------------------------------------------------------------------------------------------


def _alarm_seconds(timeout: float) -> int | None:
    """math-verify's timeout argument for `timeout` seconds in this thread.

    `signal.alarm` takes whole seconds (a float makes math-verify's `parse` fail silently and
    return []), so round up to at least 1. Off the main thread alarms cannot be installed at all
    (math-verify raises ValueError), so there the checks run unbounded (None).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return max(1, math.ceil(timeout))


def _parse_gold(gold: str, seconds: int | None) -> list:
    """Parse a reference answer given bare (`0.5`, `\\frac{1}{2}`, `(3, \\frac{\\pi}{2})`).

    math-verify only recognises LaTeX inside delimiters and, bare, reads `3, 5, 7` as `7`;
    wrapping in `\\boxed{}` (its top-priority target) makes it read the whole answer.
    Fall back to `$...$` and then the raw string for answers that do not survive boxing.
    """
    gold = gold.strip()
    inner = extract_boxed(gold)
    candidates = [f"\\boxed{{{inner}}}"] if inner is not None else []
    candidates += [f"\\boxed{{{gold}}}", f"${gold}$", gold]
    for candidate in candidates:
        parsed = parse(candidate, parsing_timeout=seconds)
        if parsed:
            return parsed
    return []


def _parse_prediction(text: str, seconds: int | None) -> tuple[str | None, list]:
    """(extracted answer, math-verify parse) of a model's output.

    With a box, only the last box's content is parsed. Without one, math-verify parses the
    whole text (its own priorities: `final answer is ...`, the last `$...$`, the last number),
    and the extracted answer is the string it matched.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed, parse(f"\\boxed{{{boxed}}}", parsing_timeout=seconds)
    parsed = parse(text, parsing_timeout=seconds)
    matched = next((p for p in reversed(parsed) if isinstance(p, str)), None)
    if matched is None and parsed:
        matched = str(parsed[0])
    return matched, parsed


def check_answer(gold: str, prediction_text: str, timeout: float = 5.0) -> Result:
    """(extracted answer, correct?) for one prediction against its reference answer.

    Calls `verify(parse(gold), parse(prediction))` -- gold first, as math-verify's comparison is
    not symmetric. Each math-verify stage (two parses and the comparison) gets its own
    `signal.alarm` of `ceil(timeout)` seconds in the main thread; in any other thread the stages
    run without a bound (use `verify_batch` there). Errors and timeouts count as wrong.
    Note: in the main thread this uses SIGALRM and cancels any alarm the caller had pending.
    """
    seconds = _alarm_seconds(timeout)
    extracted, predicted = _parse_prediction(str(prediction_text), seconds)
    gold_parsed = _parse_gold(str(gold), seconds)
    if not gold_parsed or not predicted:
        return extracted, False
    return extracted, bool(verify(gold_parsed, predicted, timeout_seconds=seconds))


def _pool_check(gold: str, prediction_text: str, wall_timeout: float) -> Result:
    """The check a worker runs under a parent deadline of `wall_timeout` seconds.

    Each stage's alarm is about half the deadline, so a single slow stage usually ends inside
    the worker (which then stays alive) instead of at the deadline (which costs a respawn).
    """
    return check_answer(gold, prediction_text, timeout=max(1.0, wall_timeout / 2))


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------

_READY = "ready"

# Bootstrap of a worker interpreter: adopt the parent's import path (as multiprocessing's spawn
# does), then enter the loop. argv: the path list as JSON, the socket's file descriptor.
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from lco_cli.evals.verify import worker_entry; worker_entry(int(sys.argv[2]))"
)


def worker_entry(fd: int) -> None:
    """Worker process: receive the check function, warm up, then serve items until EOF/None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # a timeout is an expected outcome
    conn = Connection(fd)
    check_fn = conn.recv()
    parse("$1$")  # load the LaTeX parser now, not inside the first item's deadline
    conn.send(_READY)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message is None:
            return
        index, gold, prediction, timeout = message
        try:
            extracted, correct = check_fn(gold, prediction, timeout)
            result = (None if extracted is None else str(extracted), bool(correct))
        except (Exception, timeout_exception()):  # a broken check is wrong, not a dead worker
            result = (None, False)
        conn.send((index, result))


class _Worker:
    """One worker process, its connection, and the item it is running (index, deadline).

    Workers are fresh interpreters (`python -c ...`), not multiprocessing children: spawn and
    forkserver children re-import the caller's `__main__` (slow when it imports torch, fatal
    when it is an unguarded script), and fork would copy a parent holding CUDA and threads.
    """

    def __init__(self, check_fn: CheckFn):
        parent_sock, child_sock = socket.socketpair()
        with child_sock:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, json.dumps(sys.path), str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()],
                stdin=subprocess.DEVNULL,
            )
        # The child now holds the only other end, so its exit reads as EOF here.
        self.conn = Connection(parent_sock.detach())
        self.conn.send(check_fn)  # pickled by reference: must be importable, not in __main__
        self.ready = False
        self.started = time.monotonic()
        self.task: tuple[int, float] | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not yet delivered
            pass
        self.conn.close()

    def request_exit(self) -> None:
        """Ask an idle worker to exit (see `kill` to make sure it did)."""
        try:
            self.conn.send(None)
        except OSError:
            pass

    def stop(self, grace: float = 1.0) -> None:
        """Wait up to `grace` seconds for a requested exit, then kill."""
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class VerifierPool:
    """A small persistent pool of checking processes with per-item wall deadlines.

    `check_fn(gold, prediction, timeout) -> (extracted, correct)` must be a module-level
    (picklable) function; the default is math-verify's check. Items are sent one at a time to
    idle workers, so each item's deadline starts when a worker actually receives it. An item
    whose worker overruns the deadline or dies counts as wrong and the worker is replaced.
    Not thread-safe by itself (`verify_batch` serialises access to the shared pool).
    """

    def __init__(self, workers: int, check_fn: CheckFn = _pool_check):
        if workers < 1:
            raise ValueError(f"a VerifierPool needs at least one worker, got {workers}")
        self.size = workers
        self.check_fn = check_fn
        self._workers: list[_Worker] = []
        self.respawns = 0  # workers replaced after a timeout or crash (for logs and tests)

    # -- lifecycle ---------------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        """Replace dead workers, then grow or shrink to `size`."""
        for i, worker in enumerate(self._workers):
            if not worker.alive():
                worker.kill()
                self._workers[i] = _Worker(self.check_fn)
        while len(self._workers) < self.size:
            self._workers.append(_Worker(self.check_fn))
        while len(self._workers) > self.size:
            extra = self._workers.pop()
            extra.request_exit()
            extra.stop()

    def close(self) -> None:
        """Stop all workers (killing any that are busy)."""
        workers, self._workers = self._workers, []
        idle = [w for w in workers if w.task is None and w.ready]
        for worker in idle:
            worker.request_exit()  # all at once, so that they exit in parallel
        for worker in workers:
            worker.stop(grace=1.0 if worker in idle else 0.0)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self.check_fn)
        self.respawns += 1

    # -- checking ----------------------------------------------------------------------------

    def map(self, golds: Sequence[str], predictions: Sequence[str], timeout: float) -> list[Result]:
        """Check every (gold, prediction) pair; results keep the input order."""
        if len(golds) != len(predictions):
            raise ValueError(f"{len(golds)} gold answers but {len(predictions)} predictions")
        try:
            return self._run(list(golds), list(predictions), float(timeout))
        except BaseException:
            self.close()  # unknown state (e.g. Ctrl-C mid-batch): never reuse busy workers
            raise

    def _run(self, golds: list[str], predictions: list[str], timeout: float) -> list[Result]:
        # Failed items still report the box (cheap, in the parent) for logging.
        results: list[Result | None] = [None] * len(golds)
        todo = collections.deque(range(len(golds)))
        self._ensure_workers()

        def fail(index: int) -> None:
            results[index] = (extract_boxed(str(predictions[index])), False)

        while todo or any(w.task is not None for w in self._workers):
            self._dispatch(todo, golds, predictions, timeout)
            self._collect(results, fail)
        return results  # type: ignore[return-value]

    def _dispatch(self, todo: collections.deque, golds, predictions, timeout: float) -> None:
        """Hand the next items to idle, started workers."""
        for worker in list(self._workers):
            if not todo or not worker.ready or worker.task is not None:
                continue
            index = todo.popleft()
            try:
                worker.conn.send((index, str(golds[index]), str(predictions[index]), timeout))
            except OSError:  # it died while idle: retry the item on its replacement
                todo.appendleft(index)
                self._replace(worker)
                continue
            worker.task = (index, time.monotonic() + timeout)

    def _collect(self, results: list, fail: Callable[[int], None]) -> None:
        """Wait for the next message or deadline; record results, replace failed workers."""
        waiting = [w for w in self._workers if w.task is not None or not w.ready]
        if not waiting:
            return
        deadlines = [w.task[1] if w.task else w.started + STARTUP_TIMEOUT_S for w in waiting]
        pause = max(0.0, min(deadlines) - time.monotonic())
        handles = {w.conn: w for w in waiting}
        ready = {handles[h] for h in wait_ready(list(handles), timeout=pause)}
        for worker in ready:
            self._receive(worker, results, fail)
        now = time.monotonic()
        for worker in waiting:
            if worker in ready or worker not in self._workers:
                continue
            if worker.task is not None and now >= worker.task[1]:
                fail(worker.task[0])
                self._replace(worker)
            elif not worker.ready and now >= worker.started + STARTUP_TIMEOUT_S:
                raise RuntimeError(f"a verifier worker did not start within {STARTUP_TIMEOUT_S:.0f}s")

    def _receive(self, worker: _Worker, results: list, fail: Callable[[int], None]) -> None:
        """Read one message from `worker`, or handle its death."""
        try:
            message = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            message = None
        if message is None:  # the process exited (or its pipe broke)
            if not worker.ready:
                worker.kill()
                code = worker.proc.returncode
                raise RuntimeError(f"a verifier worker exited during startup (exit code {code})")
            if worker.task is not None:
                fail(worker.task[0])
            self._replace(worker)
        elif message == _READY:
            worker.ready = True
        else:
            index, result = message
            results[index] = result
            worker.task = None


# --------------------------------------------------------------------------------------------
# Batch API
# --------------------------------------------------------------------------------------------

_POOL: VerifierPool | None = None
_POOL_LOCK = threading.Lock()


def default_workers() -> int:
    """min(MAX_DEFAULT_WORKERS, usable CPU cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


def shutdown_pool() -> None:
    """Stop the shared worker pool (it is restarted on demand)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


atexit.register(shutdown_pool)


def _use_pool(n_items: int, workers: int | None) -> bool:
    """Whether a batch goes to the pool rather than in-process checking."""
    if workers == 0:
        return False
    if workers is not None:
        return True
    if threading.current_thread() is not threading.main_thread():
        return True  # in-process checks would have no timeout at all here
    return _POOL is not None or n_items > INPROCESS_MAX_ITEMS


def _check_in_process(golds, predictions, timeout: float) -> list[Result]:
    if threading.current_thread() is not threading.main_thread():
        logger.warning("verify_batch(workers=0) off the main thread runs checks without timeouts")
    results = []
    for gold, prediction in zip(golds, predictions):
        try:
            results.append(check_answer(gold, prediction, timeout))
        except (Exception, timeout_exception()):  # an alarm landing between math-verify stages
            results.append((extract_boxed(str(prediction)), False))
    return results


def verify_batch(
    golds: Sequence[str],
    predictions: Sequence[str],
    timeout: float = 5.0,
    workers: int | None = None,
) -> list[Result]:
    """(extracted answer, correct?) for each (gold, prediction) pair, in input order.

    `workers=None` (auto): batches of at most `INPROCESS_MAX_ITEMS` are checked in-process in
    the main thread while no pool is running; larger ones (or any, once the pool runs, or any
    call off the main thread) go to a shared pool of `default_workers()` processes that stays up
    between calls. `workers=N>0` always uses a pool of N. `workers=0` checks in-process.

    In the pool, `timeout` is a hard wall-clock bound per item: a check still running after
    `timeout` seconds (or whose worker crashed) is wrong, its worker is killed and replaced.
    In-process, `timeout` only bounds each math-verify stage via SIGALRM (which cannot stop
    a computation stuck inside C code).
    """
    if len(golds) != len(predictions):
        raise ValueError(f"{len(golds)} gold answers but {len(predictions)} predictions")
    if not golds:
        return []
    if not _use_pool(len(golds), workers):
        return _check_in_process(golds, predictions, timeout)
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = VerifierPool(workers or default_workers())
        elif workers:
            _POOL.size = workers
        return _POOL.map(golds, predictions, timeout)
