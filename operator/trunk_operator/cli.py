"""`trunk-operator`: run the operator, or render configuration without a cluster.

trunk-operator render -f trunk.yaml -f dids.yaml -f secret.yaml [-o DIR]
trunk-operator run [kopf run options]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from trunk_operator.core.plan import SEGMENT, TRUNK, Inputs, plan_namespace
from trunk_operator.core.render import Files

# A Kubernetes object name (DNS-1123 subdomain). Names become file names, so nothing else
# (`/`, `..`) may reach a path.
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
OBJECT_NAME_MAX = 253
RENDERED_KINDS = ("Secret", TRUNK, SEGMENT)


class InputError(ValueError):
    """A document or output path `render` refuses; the message names the culprit."""


def _check_name(doc: dict[str, Any], where: str) -> None:
    if doc.get("kind") not in RENDERED_KINDS:
        return  # ignored by `render`, so its name never reaches a path
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or len(name) > OBJECT_NAME_MAX or not OBJECT_NAME.fullmatch(name):
        raise InputError(
            f"{where} ({doc['kind']}): metadata.name {name!r} is not a valid Kubernetes object"
            f" name (lowercase letters, digits, '-' and '.', starting and ending with a letter"
            f" or digit, at most {OBJECT_NAME_MAX} characters)"
        )


def _documents(paths: list[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        for index, doc in enumerate(yaml.safe_load_all(text), start=1):
            if not doc:
                continue
            where = f"{'stdin' if path == '-' else path}, document {index}"
            if not isinstance(doc, dict):
                raise InputError(f"{where}: not a Kubernetes object (a YAML mapping)")
            _check_name(doc, where)
            docs.append(doc)
    return docs


def _targets(output: str, files: Files) -> dict[Path, str]:
    """Where each file goes under `output`; refuses any path that would land outside it."""
    root = Path(output).resolve()
    targets: dict[Path, str] = {}
    for path, text in files.items():
        # Resolved for the check only (`..`, symlinks); written and printed as given.
        if not (root / path).resolve().is_relative_to(root):
            raise InputError(f"refusing to write {path!r}: it is outside {output}")
        targets[Path(output) / path] = text
    return targets


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
    try:
        files, problems = render_documents(_documents(args.filename), args.placeholder_secrets)
        targets = _targets(args.output, files) if args.output else {}
    except InputError as error:
        print(f"trunk-operator render: error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.output:
        for target, text in targets.items():
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
    # installed (a development venv), and its models cost memory for nothing. Keep it out.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from kopf.cli import main as kopf_main  # imported here: `render` needs no cluster libs

    from trunk_operator import handlers

    namespaces = handlers.SETTINGS.watch_namespaces
    scope = [f"--namespace={n}" for n in namespaces] if namespaces else ["--all-namespaces"]
    sys.argv = ["kopf", "run", *scope, "-m", handlers.__name__, *args.kopf_args]
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
