"""The pod scripts (`scripts/*.sh`), given their parameters, as the one command an exec runs.

An exec carries a command, not a file: each run sends `sh -c` with the parameters as shell
assignments, then `lib.sh`, then the script. The scripts are POSIX sh (dash, busybox), checked
by shellcheck in `make lint`; every parameter is a variable in CAPITALS, set here, so the
paths and markers have one source (this package's constants). Comment lines are not sent:
the command is part of the exec request's URL.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from functools import cache
from importlib import resources

SCRIPTS = resources.files("trunk_operator.pod") / "scripts"
_COMMENT = re.compile(r"^\s*#.*\n", re.MULTILINE)


@cache
def _text(name: str) -> str:
    return _COMMENT.sub("", (SCRIPTS / name).read_text())


def assignments(params: Mapping[str, str | int | float]) -> str:
    """`params` as shell assignments, each value quoted."""
    for name in params:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ValueError(f"a script parameter is named in capitals: {name!r}")
    return "".join(f"{name}={shlex.quote(str(value))}\n" for name, value in params.items())


def library() -> str:
    """The functions the scripts share (scripts/lib.sh)."""
    return _text("lib.sh")


def command(
    script: str, params: Mapping[str, str | int | float], functions: str | None = None
) -> str:
    """The text for `sh -c`: `params` as assignments, the shared functions, a delivery
    strategy's `functions` (files.sh, ari.sh), then `script`."""
    strategy = _text(functions) if functions else ""
    return assignments(params) + library() + strategy + _text(script)
