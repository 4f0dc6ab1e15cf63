"""Input errors reported as one short message (the CLI's ``error:`` line) instead of a traceback.

The project's checks raise ``ValueError``, ``FileNotFoundError``, ``KeyError`` or ``CheckpointError`` with a message
that names the file or value and the fix; jsonargparse wraps those raised while classes are built in 70-110 lines of
its own, and prints its usage before its own parse errors. :func:`user_error` finds the message that matters.
"""

from __future__ import annotations

import re
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lightning_modules.core.stages import CheckpointError

REPO = Path(__file__).resolve().parents[2]
# Exceptions that report bad input (the project's own checks, and Lightning's configuration errors).
USER_ERRORS = (CheckpointError, ValueError, FileNotFoundError, KeyError, MisconfigurationException)


def _ours(filename: str) -> bool:
    return str(REPO) in filename and ".venv" not in filename and "site-packages" not in filename


def user_error(err: BaseException) -> str | None:
    """The message of the input error behind ``err``, or ``None`` when ``err`` is a bug (it keeps its traceback).

    The input error is the outermost exception of the chain that the project's code (or Lightning's configuration
    checks) raised (an outer one may add a hint to a deeper one); a parse error is shortened by :func:`parser_error`.
    """
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    if isinstance(chain[0], ArgumentError):  # a value the parser refuses (exit_on_error=False)
        return parser_error(str(chain[0]))
    for exc in chain:  # the outermost of the project's own (it may add a hint to a deeper one)
        if not isinstance(exc, USER_ERRORS):
            continue
        if isinstance(exc, KeyError) and " " not in str(exc.args[0] if exc.args else ""):
            continue  # a bare missing key (KeyError('x')) is a bug, not an explained input error
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if "Original Traceback" in message:  # raised in a DataLoader worker: its last line is the error
            lines = message.rstrip().splitlines()
            files = [line for line in lines if line.strip().startswith("File ")]
            ours = files and _ours(files[-1])
            head = f"{type(exc).__name__}: "
            tail = next((i for i in range(len(lines) - 1, -1, -1) if head in lines[i]), None)
            if ours and tail is not None:
                return "\n".join([lines[tail].split(head, 1)[1], *lines[tail + 1 :]])
            continue
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        filename = frame.tb_frame.f_code.co_filename if frame is not None else ""
        if isinstance(exc, MisconfigurationException) or _ours(filename):
            return message
    return None


def parser_error(message: str) -> str:
    """A parser error without jsonargparse's nesting, e.g. ``--data.init_args.scale: Expected a <class 'int'>...``."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        return message.strip()
    noise = ("Does not validate", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>", "Given")
    lines = [re.sub(r'^Parser key "[^"]+":', "", line.strip()).strip() for line in message.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(noise) and "given class_path" not in line]
    reason = "; ".join(dict.fromkeys(reasons)) or message.strip()
    return f"--{keys[0]}{''.join(f'.init_args.{k}' for k in keys[1:])}: {reason} (--help lists the options)"
