"""The ``progressista`` command: serve, run, demo, watch, notify-test.

A command used wrongly exits with 2 and at most two lines on stderr: one, or argparse's one-line
usage and the error. A server that cannot be reached (or refuses) exits with 1 and one line.
``run`` exits with its program's status, dying by the same signal when the program did.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .settings import SettingError, parse_duration, url_problem

__all__ = ["main"]

COMMANDS = "serve, run, demo, watch or notify-test"

RUN_USAGE = """\
usage: progressista run [--url URL] [--token TOKEN] [--job NAME] [--meta KEY=VALUE ...]
                        (script.py | -m module | [--] command) [args ...]

Run a program with every tqdm bar in it remote: the script, its subprocesses and its
multiprocessing workers, all patched before any of their code runs. Every bar carries the job
name; the run itself shows as the job's parent task, completed on exit code 0 and failed
otherwise. The exit code is passed through.

options:
  --url URL          the server (default: $PROGRESSISTA_URL or http://127.0.0.1:8000)
  --token TOKEN      the server's write token (default: $PROGRESSISTA_TOKEN)
  --job NAME         the job label (default: $PROGRESSISTA_JOB, or the program and the time)
  --meta KEY=VALUE   a label for every bar; repeat for more
  -m module          run a module, as python -m does
  -- command ...     run any command; the Pythons it starts are patched (the -- may be
                     left out before a program such as python: `run python train.py`)
"""

#: What ``run`` uses when a flag is left out.
RUN_DEFAULTS = {
    "--url": "$PROGRESSISTA_URL or http://127.0.0.1:8000",
    "--token": "$PROGRESSISTA_TOKEN",
    "--job": "$PROGRESSISTA_JOB, or the program and the time",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "serve":
            from .server.__main__ import main as serve

            return serve(args[1:], prog="progressista serve")
        if args and args[0] == "run":
            return _run(args[1:])
        return _other(args)
    except SettingError as error:
        print(f"progressista: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _url(text: str) -> str:
    """A server URL given on the command line (argparse names the argument)."""
    problem = url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, not {text!r}")
    return text.rstrip("/")


def _not_empty(instead: str) -> Callable[[str], str]:
    """A value that must not be empty (``--token "$UNSET"``): leaving it out means ``instead``."""

    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"is empty; leave it out to use {instead}")
        return text

    return check


def _seconds(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text!r}")
    return seconds


def _other(args: list[str]) -> int:
    from .connection import TIMEOUT

    parser = argparse.ArgumentParser(
        prog="progressista",
        description="Remote tqdm progress bars on one live web page.",
    )
    parser.add_argument("--version", action="version", version=f"progressista {__version__}")
    # Not required: argparse would report a missing command before an unknown option.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "serve", help="run the server (python -m progressista.server)", add_help=False
    )
    commands.add_parser(
        "run", help="run a program with every tqdm bar in it remote", add_help=False
    )
    demo = commands.add_parser(
        "demo",
        help="send a few realistic bars, some failing, to a server",
        description="Send a few realistic bars, some of them failing, to a server, as one job.",
    )
    demo.add_argument(
        "--url",
        type=_url,
        help="the server (default: $PROGRESSISTA_URL or http://127.0.0.1:8000)",
    )
    demo.add_argument(
        "--token",
        type=_not_empty("$PROGRESSISTA_TOKEN"),
        help="the server's write token (default: $PROGRESSISTA_TOKEN)",
    )
    demo.add_argument(
        "--seconds", type=_seconds, default=20.0, help="about how long the demo runs (default: 20)"
    )
    notify_test = commands.add_parser(
        "notify-test",
        help="send one sample notification, to check a --notify URL",
        description="Send one sample notification through Apprise, to check a URL before a "
        "real job depends on it. Takes what --notify takes: an Apprise URL, optionally after "
        "'jobs=GLOB '.",
    )
    notify_test.add_argument("destination", metavar="URL", help="an Apprise URL")
    watch = commands.add_parser(
        "watch",
        help="mirror the live bars in this terminal",
        description="Mirror a server's live bars in this terminal (for SSH sessions).",
    )
    watch.add_argument(
        "url",
        metavar="URL",
        nargs="?",
        type=_url,
        help="the server (default: $PROGRESSISTA_URL or http://127.0.0.1:8000)",
    )
    watch.add_argument(
        "--token",
        type=_not_empty("$PROGRESSISTA_READ_TOKEN"),
        help="the read token (default: $PROGRESSISTA_READ_TOKEN)",
    )
    watch.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=TIMEOUT,
        help=f"give up on a server that does not answer within this long (default: {TIMEOUT:g})",
    )
    options, unknown = parser.parse_known_args(args)
    if unknown:
        # Said by the command it was given to, with that command's usage.
        given_to = commands.choices[options.command] if args[:1] == [options.command] else parser
        given_to.error(f"unrecognized arguments: {' '.join(unknown)}")
    if options.command is None:
        parser.error(f"give a command: {COMMANDS} (see progressista --help)")
    if options.command == "notify-test":
        return _notify_test(options.destination)
    if options.command == "demo":
        from .demo import demo as run_demo
        from .settings import ClientSettings

        settings = ClientSettings.from_env(os.environ, url=options.url, token=options.token)
        return run_demo(settings, options.seconds)
    from .settings import ViewerSettings
    from .terminal import watch as run_watch

    viewer = ViewerSettings.from_env(os.environ, url=options.url, read_token=options.token)
    return run_watch(viewer.url, viewer.read_token, timeout=options.timeout)


def _notify_test(destination: str) -> int:
    from .server.alert import MissingApprise, send_test

    try:
        problem = send_test(destination)
    except (MissingApprise, ValueError) as error:
        raise SettingError(f"notify-test: {error}") from None
    if problem is not None:
        print(f"progressista: the notification was not sent: {problem}", file=sys.stderr)
        return 1
    print("sent: check that it arrived", file=sys.stderr)
    return 0


def _script_or_command(target: str) -> str:
    """``run train.py`` runs a script with this Python; ``run python train.py`` (as one would
    type after ``time`` or ``nohup``) runs a program: a name found on PATH that is no file
    here, or an executable file that is not Python source (a binary, such as a virtualenv's
    python). Before, the first was "no such file" and the second a SyntaxError about null
    bytes, from running the interpreter as a script."""
    path = Path(target)
    if path.suffix == ".py":
        return "script"
    if path.is_file():
        try:
            with path.open("rb") as file:
                binary = file.read(4) in _EXECUTABLE_MAGIC
        except OSError:
            return "script"
        return "command" if binary and os.access(path, os.X_OK) else "script"
    return "command" if shutil.which(target) else "script"


#: How executables begin: ELF (Linux), and Mach-O's, thin and fat, both byte orders (macOS).
_EXECUTABLE_MAGIC = (
    b"\x7fELF",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
)


def _run(args: list[str]) -> int:
    from .runner import Launch, parse_meta, run

    options: dict[str, str] = {}
    meta: list[str] = []
    launch: Launch | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            print(RUN_USAGE, end="")
            return 0
        if arg == "--":
            if i + 1 >= len(args):
                raise SettingError("run: give a command after --")
            launch = Launch("command", args[i + 1], args[i + 2 :])
            break
        if arg == "-m":
            if i + 1 >= len(args):
                raise SettingError("run: give a module after -m")
            launch = Launch("module", args[i + 1], args[i + 2 :])
            break
        name, sep, value = arg.partition("=")
        if name in ("--url", "--token", "--job", "--meta"):
            if not sep:
                if i + 1 >= len(args):
                    raise SettingError(f"run: {name} needs a value")
                i += 1
                value = args[i]
            if name == "--meta":
                meta.append(value)
            elif not value:  # `--job "$UNSET"` is a mistake, not a request for the default
                raise SettingError(f"{name} is empty; leave it out to use {RUN_DEFAULTS[name]}")
            elif name == "--url" and (problem := url_problem(value)) is not None:
                raise SettingError(f"--url: {problem}, not {value!r}")
            else:
                options[name[2:]] = value
            i += 1
            continue
        if arg.startswith("-"):
            raise SettingError(f"run: unknown option {arg!r} (see progressista run --help)")
        launch = Launch(_script_or_command(arg), arg, args[i + 1 :])
        break
    if launch is None:
        raise SettingError("run: what should I run? (see progressista run --help)")
    status = run(
        launch,
        url=options.get("url"),
        token=options.get("token"),
        job=options.get("job"),
        meta=parse_meta(meta),
    )
    if status < 0:  # the program died by a signal: so does the runner, for the shell's sake
        sys.stdout.flush()
        try:
            signal.signal(-status, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL and SIGSTOP cannot be handled, and need not be reset
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


if __name__ == "__main__":
    sys.exit(main())
