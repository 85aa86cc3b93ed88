"""``vlmsteer <command>``: thin shells that parse options and call the library, one module per
command or command group, named after it (:mod:`.extract`, :mod:`.concepts`, :mod:`.eval`,
:mod:`.vectors`, ...); shared options live in :mod:`.common`, the engine option in :mod:`.engine`.

Every problem with the user's input ends with a one-line ``error: ...`` on stderr and exit
code 2, never a traceback; Ctrl-C exits with 130.
"""

from __future__ import annotations

import atexit
import os
import sys

import typer

from vlmsteer.cli import (  # noqa: F401
    concepts,
    data,
    demo,
    diff,
    eval,
    extract,
    finetune,
    info,
    organisms,
    score,
    select,
    separability,  # (importing a module registers its commands)
    shift,
    store,
    sweep,
    vectors,
)
from vlmsteer.cli.common import app, err_console
from vlmsteer.errors import VlmsteerError

__all__ = ["app", "main", "entry"]


INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


def _error(message: str, code: int = 2) -> int:
    err_console.print(f"error: {' '.join(str(message).split())}", highlight=False, markup=False, soft_wrap=True)
    return code


def _interrupted(code: int = INTERRUPTED, resumes: str | None = None) -> int:
    """The line a stopped command ends with; ``resumes``: what a rerun of it picks up, for the
    commands that resume (see ``cli.common.resumes``)."""
    what = "terminated" if code == TERMINATED else "interrupted"
    again = f"rerun the same command to resume ({resumes})" if resumes else "rerun the same command to start again"
    err_console.print(f"{what}: finished outputs are kept, nothing partial is published; {again}",
                      highlight=False, soft_wrap=True)
    return code


def _is(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is a click-family exception called ``name``: matched by class name, so
    click's own classes and the copies typer vendors (typer >= 0.29) are both recognized."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _log_to_stderr() -> None:
    """The library's ``logging`` messages (logger "vlmsteer": stage timings, skipped figures)
    as plain lines on stderr; set once per process."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("vlmsteer")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=err_console, show_time=False, show_path=False))
        logger.setLevel(logging.INFO)


def _flag_of(command, param: str | None) -> str | None:
    """The command-line flag that sets the library parameter ``param`` (every command that has
    the parameter spells it the same way)."""
    if param is None:
        return None
    stack = [command]
    while stack:
        cmd = stack.pop()
        stack.extend(getattr(cmd, "commands", {}).values())
        for p in getattr(cmd, "params", []):
            if p.name == param and any(o.startswith("--") for o in p.opts):
                return max(p.opts, key=len)
    return None


def _tidy_help(command) -> None:
    """Help as a reader expects it under any supported typer: a flag shows no ``<bool>`` type,
    and a required argument is its upper-case name (``STORE``), not typer 0.29's ``{store}``."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()
    usage, help_option = command.collect_usage_pieces, command.get_help_option

    def pieces(ctx):
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in usage(ctx)]

    def plain_help(ctx):
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.collect_usage_pieces, command.get_help_option = pieces, plain_help
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)


def _invoked(command, argv: list[str]):
    """The command ``argv`` names (a leaf, or a group where it names none) and its path,
    read without parsing (errors come when the command line is parsed for real)."""
    names, cmd, args = [], command, list(argv)
    while hasattr(cmd, "commands"):
        takes_value = {opt for p in cmd.params if not getattr(p, "is_flag", False) for opt in p.opts}
        while args and args[0].startswith("-"):
            flag = args.pop(0)
            if flag in takes_value and args:
                args.pop(0)
        sub = cmd.commands.get(args[0]) if args else None
        if sub is None:
            break
        names.append(args.pop(0))
        cmd = sub
    return cmd, names


def _after_rank_0(code: int) -> int:
    """``code``, a few seconds late: a launcher stops every rank when the first one fails, so a
    rank that refuses quietly waits for rank 0 to say why."""
    import time

    time.sleep(RANK_0_FIRST_S)
    return code


RANK_0_FIRST_S = 5.0


def _rank() -> int:
    from vlmsteer.runs.protocol import rank_and_world

    return rank_and_world()[0]


def _refused_under_launcher(command, leaf, names: list[str], argv: list[str]) -> int | None:
    """Under torchrun (WORLD_SIZE > 1), a command (``leaf``, invoked as ``names``) that does not
    run data-parallel is refused by every rank before any model or engine starts: rank 0 says
    so in one line."""
    from vlmsteer.runs.protocol import rank_and_world

    try:
        rank, world = rank_and_world()
    except VlmsteerError as exc:
        return _error(str(exc))
    if world <= 1 or any(a in ("--help", "-h") for a in argv):
        return None
    if getattr(leaf.callback, "data_parallel", False) or not names:
        return None
    if rank != 0:
        return _after_rank_0(2)
    runs = ", ".join(sorted(_data_parallel_names(command)))
    return _error(f"'vlmsteer {' '.join(names)}' runs in one process: start it without torchrun "
                  f"(WORLD_SIZE is {world}; data-parallel commands: {runs})")


def _data_parallel_names(command, prefix: str = "") -> list[str]:
    found = []
    for name, sub in getattr(command, "commands", {}).items():
        found += _data_parallel_names(sub, f"{prefix}{name} ")
        if getattr(sub.callback, "data_parallel", False):
            found.append(prefix + name)
    return found


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one ``error: ...`` line and exit code 2;
    Ctrl-C exits with 130 and a line saying how to resume."""
    import signal
    import threading

    from vlmsteer.hooks import PositionError
    from vlmsteer.registry import load_plugins

    try:
        load_plugins()  # before the commands are built: their help lists the plugins' entries
    except VlmsteerError as exc:
        return _error(str(exc))
    command = typer.main.get_command(app)
    _tidy_help(command)
    _log_to_stderr()
    args = sys.argv[1:] if argv is None else argv
    leaf, names = _invoked(command, args)
    refused = _refused_under_launcher(command, leaf, names, args)
    if refused is not None:
        return refused
    resume_hint = getattr(leaf.callback, "resume_hint", None)
    signals: list[int] = []
    pid = os.getpid()

    def on_sigterm(signum, frame):  # a scheduler's kill or `kill PID`: handled like Ctrl-C
        if os.getpid() != pid:  # a forked prefetch worker inherited this handler: end as usual
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        signals.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    stopped = lambda: _interrupted(TERMINATED if signals else INTERRUPTED, resume_hint)  # noqa: E731
    try:
        result = command.main(args=argv, prog_name="vlmsteer", standalone_mode=False)
    except VlmsteerError as exc:
        if exc.every_rank and _rank() != 0:
            return _after_rank_0(exc.exit_code)
        flag = _flag_of(command, exc.param)
        return _error(str(exc) + (f" (option {flag})" if flag else ""), exc.exit_code)
    except PositionError as exc:  # steering cannot tell where it is: never a silent no-op
        return _error(f"steering stopped: {exc}", 1)
    except KeyboardInterrupt:
        return stopped()
    except OSError as exc:  # a writer or reader the library did not wrap: still one line
        where = exc.filename if exc.filename is not None else "input/output"
        return _error(f"{where}: {exc.strerror or exc}; finished outputs are kept", 1)
    except Exception as exc:
        if _is(exc, "NoArgsIsHelpError"):  # a bare `vlmsteer` or group: show the help
            exc.show()
            return 2
        if _is(exc, "Exit"):
            code = int(getattr(exc, "exit_code", 0) or 0)
            return stopped() if code == INTERRUPTED else code
        if _is(exc, "Abort"):  # click < 8.2 / typer < 0.29 turn Ctrl-C into Abort
            return stopped()
        if _is(exc, "ClickException"):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None and _is(exc, "UsageError") else ""
            return _error(exc.format_message() + hint, 2 if _is(exc, "UsageError") else 1)
        raise
    # typer >= 0.29 turns Ctrl-C into Exit(130), which non-standalone mode returns as a value
    if result == INTERRUPTED:
        return stopped()
    return result if isinstance(result, int) else 0


def entry() -> None:
    _exit_now(main())


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, which spends about a second freeing
    torch's and transformers' objects one by one (measured: 1.0 s of a 7 s ``extract``). The
    exit handlers (logging, temporary folders) run and the standard streams are flushed first,
    so nothing is lost."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
