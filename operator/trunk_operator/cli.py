"""`trunk-operator`: run the operator, or render configuration without a cluster.

trunk-operator render -f trunk.yaml -f dids.yaml -f secret.yaml [-o DIR]
trunk-operator run [kopf run options]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from trunk_operator.plan import Inputs, plan_namespace
from trunk_operator.render import Files


def _documents(paths: list[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


PLACEHOLDER = "PLACEHOLDER"


def render_documents(
    docs: list[dict[str, Any]], placeholder_secrets: bool = False
) -> tuple[Files, list[str]]:
    """Files Asterisk would get for these CRs and Secrets, and the problems found."""
    inputs = Inputs.from_documents(docs)
    if placeholder_secrets:
        for trunk in inputs.trunks:
            creds = trunk.spec.get("credentials", {})
            name = creds.get("secretName", "")
            inputs.secrets.setdefault(
                name,
                {
                    creds.get("usernameKey", "username"): PLACEHOLDER,
                    creds.get("passwordKey", "password"): PLACEHOLDER,
                },
            )
    plan = plan_namespace(inputs)
    problems = [
        f"{ref}: {c.reason}: {c.message}"
        for ref, outcome in sorted(plan.outcomes.items())
        for c in outcome.problems
    ]
    return plan.all_files(), problems


def _render(args: argparse.Namespace) -> int:
    files, problems = render_documents(_documents(args.filename), args.placeholder_secrets)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.output:
        for path, text in files.items():
            target = Path(args.output) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(target)
    else:
        try:
            for path, text in sorted(files.items()):
                print(f";;; {path}\n{text}")
        except BrokenPipeError:  # `render ... | head` is fine
            sys.stderr.close()
    return 1 if problems and args.strict else 0


def _run(args: argparse.Namespace) -> int:
    # The operator does not use the `kubernetes` package; Kopf imports it when it is
    # installed (a development venv), which costs about 40 MiB. Keep it out.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from kopf.cli import main as kopf_main  # imported here: `render` needs no cluster libs

    from trunk_operator import handlers

    sys.argv = ["kopf", "run", "--all-namespaces", "-m", handlers.__name__, *args.kopf_args]
    return int(kopf_main() or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trunk-operator")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="print the Asterisk files for CR and Secret YAML")
    render.add_argument("-f", "--filename", action="append", required=True, help="YAML, - = stdin")
    render.add_argument("-o", "--output", help="write files under this directory")
    render.add_argument(
        "--placeholder-secrets",
        action="store_true",
        help=f"render Secrets that were not given with {PLACEHOLDER} credentials",
    )
    render.add_argument("--strict", action="store_true", help="exit 1 when problems are found")
    render.set_defaults(func=_render)
    run = sub.add_parser("run", help="run the operator (kopf run)")
    run.add_argument("kopf_args", nargs="*", help="options of `kopf run`, e.g. --standalone")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # everything after `run` belongs to `kopf run`
        return _run(argparse.Namespace(kopf_args=argv[1:]))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
