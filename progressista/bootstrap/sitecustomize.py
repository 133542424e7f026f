"""Loaded by every Python that ``progressista run`` starts (this folder is on its PYTHONPATH).

It patches tqdm before any user code runs, reports an uncaught exception of the run's main
process to the runner, then hands over to the ``sitecustomize`` it shadows, if there is one. It
must never break the program it runs in: any failure is one line on stderr.
"""

import os
import sys
import types


def _patch() -> None:
    try:
        from progressista.patch import install
    except ImportError as error:  # another Python, without progressista installed
        sys.stderr.write(f"progressista: not patching tqdm in {sys.executable}: {error}\n")
        return
    install()
    report = os.environ.get("PROGRESSISTA_RUN_REPORT")
    if report:
        from progressista.report import start_reporting

        start_reporting(report)
        runner = os.environ.get("PROGRESSISTA_RUN_PID")
        if runner == str(os.getppid()):
            _report_crash_to(report)
            _end_with(int(runner))


def _end_with(runner: int) -> None:
    """Be sent SIGTERM if the runner dies (Linux): killed with SIGKILL, which it cannot pass on,
    it left the program running as an orphan that nobody could stop by stopping the run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except Exception:
        return
    if os.getppid() != runner:  # it died before that: as if it had just now
        os.kill(os.getpid(), signal.SIGTERM)


def _report_crash_to(path: str) -> None:
    previous = sys.excepthook

    def excepthook(
        kind: type[BaseException], error: BaseException, tb: types.TracebackType | None
    ) -> None:
        try:
            from progressista.client.event import describe_exception
            from progressista.report import write_crash

            write_crash(path, describe_exception(error))
        except Exception:
            pass
        previous(kind, error, tb)

    sys.excepthook = excepthook


def _report_chained(error: BaseException) -> None:
    sys.stderr.write(
        f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
        f"{type(error).__name__}: {error}\n"
    )


def _chain() -> None:
    """Run the sitecustomize this file hides (Debian's, a virtualenv's), as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        import sitecustomize  # type: ignore[import-not-found]  # noqa: F401 - the next one
    except ImportError as error:
        if error.name != "sitecustomize":  # it exists and failed: say so, as site.py would
            _report_chained(error)
    except Exception as error:
        _report_chained(error)
    finally:
        sys.path[:] = saved
        if ours is not None:
            sys.modules["sitecustomize"] = ours


try:
    _patch()
except Exception as error:  # pragma: no cover - never break the user's program
    sys.stderr.write(f"progressista: could not patch tqdm: {error!r}\n")
_chain()
