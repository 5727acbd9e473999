"""Reference pages generated from the code (the documentation site's hook calls these at build time).

* :func:`cli_reference`: every command and option, walked from the Typer app's click command tree;
* :func:`result_schema`: the fields of :class:`autograder.result.GradeResult` and the records inside it;
* :func:`environment_table`: every ``CNN_GRADER_*`` variable, from :mod:`autograder.settings`;
* :func:`knobs`: the configuration dataclasses (limits, training policy, budget, archive limits,
  variants) with their defaults, read from the dataclasses themselves.

Field comments are read from the source (:func:`field_comments`): a field's text is the comment lines
directly above it followed by the comment at the end of its line, so a field documented in the code is
documented here with the same words.  Every text that reaches a page goes through :func:`md_text`, which
keeps its code spans and shows everything else as written (``<out>``, ``[ray]``, ``*``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing

# A marker in a Markdown page, replaced by the generated text: <!-- generated: NAME -->
MARKER = re.compile(r"<!--\s*generated:\s*([a-z_]+)\s*-->")


# a code span: a run of backticks, then anything up to the same run (CommonMark's rule)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
# characters Markdown would read as markup outside code spans, and what shows them as written
_LITERAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\`*_[]|"}}


def md_text(text: str) -> str:
    """``text`` as Markdown that renders exactly as written, but for its code spans (kept as code).

    Outside code spans, ``<out>`` would be read as an HTML tag (and vanish in the browser), ``[ray]`` as a
    link, ``*`` and ``_`` as emphasis and ``|`` as a table column: each is escaped."""
    parts, end = [], 0
    for m in _CODE_SPAN.finditer(text):
        parts.append("".join(_LITERAL.get(c, c) for c in text[end:m.start()]))
        parts.append(m.group(0))
        end = m.end()
    parts.append("".join(_LITERAL.get(c, c) for c in text[end:]))
    return "".join(parts)


def _cell(text) -> str:
    """A table cell's Markdown (already escaped text: one line; a pipe inside a code span needs no escape)."""
    return str(text).replace("\n", " ").strip()


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


def help_text(text: str | None) -> str:
    """A command's or option's help as ``--help`` shows it: Typer reads it as Rich markup (where ``\\[`` is a
    literal ``[`` and ``[bold]`` a style), so the page shows the same plain text."""
    from autograder.cli import app

    text = inspect.cleandoc(text or "")
    if app.rich_markup_mode == "rich":
        from rich.text import Text

        return Text.from_markup(text).plain
    return text


def cli_reference() -> str:
    parts = []
    for name, cmd in cli_commands().items():
        args = " ".join(p.name.upper() + ("..." if p.nargs == -1 else "") for p in cmd.params if not _is_option(p))
        parts.append(f"## `{name}`\n\n{md_text(help_text(cmd.help))}\n\n"
                     f"```text\npython -m autograder {name} [OPTIONS] {args}\n```\n")
        rows = []
        for p in cmd.params:
            if not _is_option(p):
                rows.append([f"`{p.name.upper()}`", "argument: " + _param_type(p), "",
                             md_text(help_text(getattr(p, "help", "")))])
                continue
            opts = " / ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
            rows.append([opts, _param_type(p), _default(p), md_text(help_text(p.help))])
        if rows:
            parts.append(_table(["option", "type", "default", "what"], rows) + "\n")
    return "\n".join(parts)


# --- dataclasses ----------------------------------------------------------------------------------------

# comments that speak to a tool, not a reader
_PRAGMA = re.compile(r"^(?:noqa\b|type:|pragma:|fmt:|pylint:)")


def field_comments(cls) -> dict[str, str]:
    """Each field's text in the code: the comment lines directly above the field (no blank line between),
    then the comment at the end of its line (or lines); a field without either has none.

    A comment block belongs to the field below it, so a block never documents two fields, and a trailing
    comment is never continued on the lines after it (they would document the next field).  Fields that
    a dataclass inherits are read from the class that defines them."""
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        comments.update(_own_field_comments(klass))
    return comments


def _own_field_comments(cls) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    (node,) = ast.parse(source).body
    fields = [(f.target.id, f.lineno, f.end_lineno) for f in node.body
              if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)]
    own_line: dict[int, str] = {}  # line: a comment alone on it
    trailing: dict[int, str] = {}  # line: a comment after code
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if _PRAGMA.match(text):
                continue
            (trailing if tok.line[:tok.start[1]].strip() else own_line)[tok.start[0]] = text
    comments = {}
    for name, first, last in fields:
        above, line = [], first - 1
        while line in own_line:
            above.insert(0, own_line[line])
            line -= 1
        text = " ".join(above + [trailing[n] for n in range(first, last + 1) if n in trailing])
        if text:
            comments[name] = text
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
    comments = field_comments(cls)
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
        row.append(md_text(comments.get(f.name, "")))
        rows.append(row)
    header = ["field", "type", "default", "what"] if with_defaults else ["field", "type", "what"]
    return _table(header, rows)


def _doc(cls) -> str:
    """The class's docstring as Markdown (Sphinx roles and double backticks as code spans)."""
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):  # the signature dataclasses write when there is no docstring
        return ""
    doc = re.sub(r":(?:mod|class|func|meth|data|attr):`~?([^`]+)`", r"`\1`", inspect.cleandoc(doc))
    return md_text(doc.replace("``", "`"))


def _section(title: str, cls, where: str = "", with_defaults: bool = True) -> str:
    intro = " ".join(t for t in (_doc(cls), where) if t)
    return f"### {title}\n\n{intro}\n\n{dataclass_table(cls, with_defaults)}\n"


def _result_classes() -> list[tuple[type, str]]:
    from autograder import faults, result
    from autograder.verifier.retrain import RetrainReport

    return [(result.GradeResult, "`GradeResult`: the file"),
            (result.QuestionResult, "`QuestionResult`: each of `questions`"),
            (result.CaseResult, "`CaseResult`: each of a question's `cases`"),
            (RetrainReport, "`RetrainReport`: `retrain`"),
            (faults.Fault, "`Fault`: `fault` (of the result, and of `retrain`)")]


def fault_causes() -> str:
    """The table of fault causes (``autograder/faults.py``: each cause's comment), with each cause's owner."""
    from autograder import faults

    source = inspect.getsource(faults)
    block = source[source.index("Cause = Literal["):source.index("]", source.index("Cause = Literal["))]
    said = dict(re.findall(r'^\s*"(\w+)",\s*#\s*(.+)$', block, flags=re.M))
    status = {"submission": "`error`", "host": "`grader_error`", "grader": "`grader_error`"}
    rows = [[f"`{c}`", faults.OWNER_OF[c], "`graded` (its training check fails)" if c in faults.RECIPE_CAUSES
             else status[faults.OWNER_OF[c]], said.get(c, "")] for c in faults.CAUSES]
    return _table(["cause", "owner", "status", "when"], rows) + "\n"


def _knob_classes() -> list[tuple[type, str, str]]:
    """Each configuration dataclass, its module, and where its values come from."""
    from autograder.batch import BatchOptions
    from autograder.engine import RetrainOptions
    from autograder.lms.similarity import SimilaritySettings
    from autograder.lms.submissions import ArchiveLimits
    from autograder.probe.sandbox import Limits
    from autograder.spec import TrainingPolicy
    from autograder.variants import VariantConfig
    from autograder.verifier.budget import Budget

    return [
        (Limits, "autograder.probe.sandbox", "Per submission; `grade --cell-timeout`, `--notebook-timeout`, "
                                             "`--memory-mb`, `--disk-mb` and `--disk-files` set five of them for a "
                                             "run, and the Gradescope runner fits them inside the container's limits."),
        (TrainingPolicy, "autograder.spec", "Per assignment, in its `spec.py`; `grade --seeds`, "
                                            "`--require-lesson-model`, `--retrain-seconds` override for a run."),
        (Budget, "autograder.verifier.budget", "Per assignment (`TrainingPolicy.budget`); `grade --max-epochs`, "
                                               "`--max-steps` override for a run."),
        (RetrainOptions, "autograder.engine", "`grade`'s options fill it."),
        (ArchiveLimits, "autograder.lms.submissions", "The same for every `grade` run (no option changes them); "
                                                      "a script passes its own as `BatchOptions.archives`."),
        (VariantConfig, "autograder.variants", "Per assignment, in its `spec.py`."),
        (SimilaritySettings, "autograder.lms.similarity", "The same for every batch."),
        (BatchOptions, "autograder.batch", "`grade`'s options fill it."),
    ]


def _interface_classes() -> list[type]:
    from autograder.spec import AssignmentSpec, Dataset

    return [AssignmentSpec, Dataset]


LIMIT_CLASSES = ("Limits", "Budget", "ArchiveLimits")


def documented_dataclasses() -> dict[str, list[type]]:
    """``{generated section: the dataclasses whose field tables it holds}``, for the docs test."""
    knobs_ = [cls for cls, _, _ in _knob_classes()]
    return {"result_schema": [cls for cls, _ in _result_classes()],
            "knobs": knobs_,
            "limits": [cls for cls in knobs_ if cls.__name__ in LIMIT_CLASSES],
            "similarity": [cls for cls in knobs_ if cls.__name__ == "SimilaritySettings"],
            "assignment_interface": _interface_classes()}


def result_schema() -> str:
    from autograder import result

    parts = [f"Schema version **{result.RESULT_SCHEMA_VERSION}** (`schema` in every file). "
             f"Statuses: {', '.join(f'`{s}`' for s in result.STATUSES)}.\n"]
    parts += [_section(title, cls) for cls, title in _result_classes()]
    parts.append(f"### Causes of a fault\n\n{fault_causes()}")
    return "\n".join(parts)


def knobs(only: tuple[str, ...] | None = None) -> str:
    """The configuration dataclasses' tables (``only``: these class names)."""
    return "\n".join(_section(f"`{cls.__name__}` (`{module}`)", cls, where)
                     for cls, module, where in _knob_classes() if only is None or cls.__name__ in only)


def assignment_interface() -> str:
    """The assignment interface's dataclasses (``autograder/spec.py``)."""
    return "\n".join(_section(f"`{cls.__name__}`", cls) for cls in _interface_classes())


def environment_table() -> str:
    from autograder import settings

    rows = [[f"`{s.name}`", f"`{s.default}`" if s.default else "(unset)", md_text(s.help), f"`{s.read_by}`"]
            for s in settings.SETTINGS]
    quiet = ", ".join(f"`{k}={v}`" for k, v in settings.QUIET_LOGGING_ENV.items())
    return (_table(["variable", "default", "what", "read by"], rows)
            + f"\n\nThe grader's subprocesses also start with {quiet} (`autograder.settings.QUIET_LOGGING_ENV`).\n")


GENERATORS = {
    "cli": cli_reference,
    "result_schema": result_schema,
    "environment": environment_table,
    "knobs": knobs,
    "fault_causes": fault_causes,
    "assignment_interface": assignment_interface,
    "limits": lambda: knobs(only=LIMIT_CLASSES),
    "similarity": lambda: knobs(only=("SimilaritySettings",)),
}


def render(markdown: str) -> str:
    """``markdown`` with every ``<!-- generated: NAME -->`` marker replaced by its generated text."""
    def one(m: re.Match) -> str:
        if m.group(1) not in GENERATORS:
            raise KeyError(f"unknown generated section {m.group(1)!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[m.group(1)]()

    return MARKER.sub(one, markdown)
