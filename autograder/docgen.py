"""Reference pages generated from the code (the documentation site's hook calls these at build time).

* :func:`cli_reference`: every command and option, walked from the Typer app's click command tree;
* :func:`result_schema`: the fields of :class:`autograder.result.GradeResult` and the records inside it;
* :func:`environment_table`: every ``CNN_GRADER_*`` variable, from :mod:`autograder.settings`;
* :func:`knobs`: the configuration dataclasses (limits, training policy, budget, archive limits,
  variants) with their defaults, read from the dataclasses themselves.

Field comments are read from the source (the ``# ...`` after a field, or the comment lines above it),
so a field documented in the code is documented here with the same words.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
import typing

# A marker in a Markdown page, replaced by the generated text: <!-- generated: NAME -->
MARKER = re.compile(r"<!--\s*generated:\s*([a-z_]+)\s*-->")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------------------------

def cli_commands():
    """``{command name: click.Command}`` of ``python -m autograder``."""
    import typer

    from autograder.cli import app

    group = typer.main.get_command(app)
    return dict(sorted(group.commands.items()))


def _is_option(p) -> bool:
    return getattr(p, "param_type_name", "") == "option"


def cli_options() -> dict[str, list[str]]:
    """``{command: [every option string, e.g. --out, --no-retrain]}`` (for the docs test)."""
    return {name: [o for p in cmd.params if _is_option(p) for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
            for name, cmd in cli_commands().items()}


def _param_type(p) -> str:
    if _is_option(p) and p.is_flag:
        return "flag"
    tp = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if tp is None:
        return ""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        tp = args[0]
    if typing.get_origin(tp) is list:
        return f"{_type_name(typing.get_args(tp)[0])} (repeatable)"
    return _type_name(tp)


def _default(p) -> str:
    if _is_option(p) and p.is_flag and p.secondary_opts:
        return "" if p.default is None else (p.opts[0] if p.default else p.secondary_opts[0])
    if p.default is None or p.default == () or p.default == []:
        return ""
    if isinstance(p.default, bool):
        return "on" if p.default else "off"
    return f"`{p.default}`"


def cli_reference() -> str:
    parts = []
    for name, cmd in cli_commands().items():
        args = " ".join(p.name.upper() + ("..." if p.nargs == -1 else "") for p in cmd.params if not _is_option(p))
        parts.append(f"## `{name}`\n\n{inspect.cleandoc(cmd.help or '')}\n\n"
                     f"```text\npython -m autograder {name} [OPTIONS] {args}\n```\n")
        rows = []
        for p in cmd.params:
            if not _is_option(p):
                rows.append([f"`{p.name.upper()}`", "argument: " + _param_type(p), "",
                             getattr(p, "help", "") or ""])
                continue
            opts = " / ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
            rows.append([opts, _param_type(p), _default(p), p.help or ""])
        if rows:
            parts.append(_table(["option", "type", "default", "what"], rows) + "\n")
    return "\n".join(parts)


# --- dataclasses ----------------------------------------------------------------------------------------

def _field_comments(cls) -> dict[str, str]:
    """The comment after each field of a dataclass (or the comment lines just above it)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    pending: list[str] = []
    line_field: dict[int, str] = {}
    for lineno, line in enumerate(source.splitlines(), 1):
        m = re.match(r"\s{4}(\w+)\s*:", line)
        if m and not line.strip().startswith(("def ", "@")):
            line_field[lineno] = m.group(1)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            name = line_field.get(tok.start[0])
            if name and tok.line.strip() and not tok.line.strip().startswith("#"):
                comments[name] = text
            else:
                pending.append(text)
        elif tok.type == tokenize.NAME and tok.start[0] in line_field and tok.start[1] == 4:
            if pending:
                comments.setdefault(line_field[tok.start[0]], " ".join(pending))
            pending = []
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            if tok.start[1] == 4 and tok.start[0] not in line_field:
                pending = []
    return comments


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) else str(tp) if typing.get_origin(tp) else getattr(tp, "__name__", str(tp))
    return re.sub(r"\b(?:[a-z_][\w]*\.)+(?=[A-Za-z_])", "", text)  # module prefixes: typing., autograder.result.


def _field_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return f"a default `{type(value).__name__}`"
    else:
        return "(required)"
    if isinstance(value, float) and value >= 1e6:
        return f"`{value:g}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**20 and value % 2**20 == 0:
        return f"`{value:_}` ({value // 2**20} MiB)"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"`{value:_}`"
    return f"`{value!r}`"


# defaults that depend on the machine the docs are built on: said in words
MACHINE_DEFAULTS = {("BatchOptions", "jobs"): "the machine's cores"}


def dataclass_table(cls, with_defaults: bool = True) -> str:
    comments = _field_comments(cls)
    hints = {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: the annotation text
        pass
    rows = []
    for f in dataclasses.fields(cls):
        tp = _type_name(hints.get(f.name, f.type))
        row = [f"`{f.name}`", f"`{tp}`"]
        if with_defaults:
            row.append(MACHINE_DEFAULTS.get((cls.__name__, f.name)) or _field_default(f))
        row.append(comments.get(f.name, ""))
        rows.append(row)
    header = ["field", "type", "default", "what"] if with_defaults else ["field", "type", "what"]
    return _table(header, rows)


def _doc(cls) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):  # the signature dataclasses write when there is no docstring
        return ""
    doc = re.sub(r":(?:mod|class|func|meth|data):`~?([^`]+)`", r"`\1`", inspect.cleandoc(doc))
    return doc.replace("``", "`")


def result_schema() -> str:
    from autograder import result
    from autograder.verifier.retrain import RetrainReport

    parts = [f"Schema version **{result.RESULT_SCHEMA_VERSION}** (`schema` in every file). "
             f"Statuses: {', '.join(f'`{s}`' for s in result.STATUSES)}.\n"]
    for cls, title in ((result.GradeResult, "`GradeResult`: the file"),
                       (result.QuestionResult, "`QuestionResult`: each of `questions`"),
                       (result.CaseResult, "`CaseResult`: each of a question's `cases`"),
                       (RetrainReport, "`RetrainReport`: `retrain`")):
        parts.append(f"### {title}\n\n{_doc(cls)}\n\n{dataclass_table(cls)}\n")
    return "\n".join(parts)


def knobs(only: tuple[str, ...] | None = None) -> str:
    """The configuration dataclasses' tables (``only``: these class names)."""
    from autograder.batch import BatchOptions
    from autograder.judge.pipeline import RetrainOptions
    from autograder.lms.submissions import ArchiveLimits
    from autograder.probe.sandbox import Limits
    from autograder.spec import TrainingPolicy
    from autograder.variants import VariantConfig
    from autograder.verifier.budget import Budget

    sections = (
        (Limits, "autograder.probe.sandbox", "Per submission; `grade --cell-timeout`, `--notebook-timeout`, "
                                             "`--memory-mb`, `--disk-mb` and `--disk-files` override five of them."),
        (TrainingPolicy, "autograder.spec", "Per assignment, in its `spec.py`; `grade --seeds`, "
                                            "`--require-lesson-model`, `--retrain-seconds` override for a run."),
        (Budget, "autograder.verifier.budget", "Per assignment (`TrainingPolicy.budget`); `grade --max-epochs`, "
                                               "`--max-steps` override for a run."),
        (RetrainOptions, "autograder.judge.pipeline", "What `grade` passes to the verifier (unset: the assignment's)."),
        (ArchiveLimits, "autograder.lms.submissions", "What an input archive may hold."),
        (VariantConfig, "autograder.variants", "Per assignment, in its `spec.py`."),
        (BatchOptions, "autograder.batch", "A batch's options (`grade`'s options fill them)."),
    )
    parts = []
    for cls, module, how in sections:
        if only is not None and cls.__name__ not in only:
            continue
        parts.append(f"### `{cls.__name__}` (`{module}`)\n\n{_doc(cls)} {how}\n\n{dataclass_table(cls)}\n")
    return "\n".join(parts)


def assignment_interface() -> str:
    """The assignment interface's dataclasses (``autograder/spec.py``), without defaults for the required."""
    from autograder.spec import AssignmentSpec, Dataset

    return "\n".join(f"### `{cls.__name__}`\n\n{_doc(cls)}\n\n{dataclass_table(cls)}\n"
                     for cls in (AssignmentSpec, Dataset))


def environment_table() -> str:
    from autograder import settings

    rows = [[f"`{s.name}`", f"`{s.default}`" if s.default else "(unset)", s.help, f"`{s.read_by}`"]
            for s in settings.SETTINGS]
    quiet = ", ".join(f"`{k}={v}`" for k, v in settings.QUIET_LOGGING_ENV.items())
    return (_table(["variable", "default", "what", "read by"], rows)
            + f"\n\nThe grader's subprocesses also start with {quiet} (`autograder.settings.QUIET_LOGGING_ENV`).\n")


GENERATORS = {
    "cli": cli_reference,
    "result_schema": result_schema,
    "environment": environment_table,
    "knobs": knobs,
    "assignment_interface": assignment_interface,
    "limits": lambda: knobs(only=("Limits", "Budget", "ArchiveLimits")),
}


def render(markdown: str) -> str:
    """``markdown`` with every ``<!-- generated: NAME -->`` marker replaced by its generated text."""
    def one(m: re.Match) -> str:
        if m.group(1) not in GENERATORS:
            raise KeyError(f"unknown generated section {m.group(1)!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[m.group(1)]()

    return MARKER.sub(one, markdown)
