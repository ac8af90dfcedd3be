"""The ``letsplay`` command line: argparse subcommands. Only this module prints."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

# Each entry: (name, help, add_arguments(parser), run(args) -> exit code).
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _commands() -> list[Command]:
    from letsplay.ui import cmd_audio, cmd_bench, cmd_data, cmd_export, cmd_model, cmd_run, cmd_train

    cmds: list[Command] = []
    cmds += cmd_run.COMMANDS
    cmds += cmd_export.COMMANDS
    cmds += cmd_audio.COMMANDS
    cmds += cmd_model.COMMANDS
    cmds += cmd_data.COMMANDS
    cmds += cmd_train.COMMANDS
    cmds += cmd_bench.COMMANDS
    return cmds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="letsplay",
        description="Real-time audio-driven performance video (Let's Play Music, ICPR 2020).",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_, add_args, run in _commands():
        sp = sub.add_parser(name, help=help_, description=help_)
        add_args(sp)
        sp.set_defaults(_run=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fresh = not logging.root.handlers
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if fresh and args.verbose < 2:
        for h in logging.root.handlers:  # the handler basicConfig made; not one a host program installed
            h.addFilter(_UserErrorTracebacks())
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        with _terminate_as_interrupt():
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"letsplay {args.command}: error: {e}", file=sys.stderr)  # say what and stop, no traceback
        return 2


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (what ``kill``, systemd and container runtimes send to stop a program) stops a
    command as Ctrl-C does: recordings are finalised and partial files kept. Only in the main
    thread, and only where no one else (a host program) has set a handler; the old
    disposition comes back after."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _UserErrorTracebacks(logging.Filter):
    """Drops a record that carries a user error's traceback (a library logging the
    exception that stopped it, e.g. a damaged audio file read by the engine's thread):
    :func:`main` reports that error in one line itself. Shown with ``-vv``."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not isinstance(exc, _user_errors())


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input or an unusable setup in words (the message says what
    to do): ValueError / OSError subclasses, and the RuntimeError-based BackendError (no
    such performer, provider unavailable) and SourceError (no such audio device). Looked
    up in sys.modules: a module that raised one is loaded, and --help stays free of torch."""
    found: list[type[BaseException]] = [ValueError, OSError]
    for module, name in (("letsplay.realtime.backends", "BackendError"), ("letsplay.realtime.sources", "SourceError")):
        m = sys.modules.get(module)
        if m is not None:
            found.append(getattr(m, name))
    return tuple(found)


if __name__ == "__main__":
    sys.exit(main())
