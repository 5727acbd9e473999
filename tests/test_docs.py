"""The documentation site: it builds offline in strict mode, and its generated reference is complete.

``mkdocs build --strict`` fails on a broken link, a missing page, a page left out of the navigation
or an unknown anchor; the reference pages are generated from the code by ``scripts/mkdocs_hooks.py``
(:mod:`autograder.docgen`), so every environment variable the code reads and every command-line
option must appear in the built site.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autograder import docgen, settings

ROOT = Path(__file__).resolve().parent.parent
CODE = ("autograder", "assignments", "scripts", "benchmarks")
ENV_NAME = re.compile(r"CNN_GRADER_[A-Z0-9_]*[A-Z0-9]")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def _env_names_in_code() -> set[str]:
    names = set()
    for folder in CODE:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", ".j2") and "__pycache__" not in path.parts:
                names |= set(ENV_NAME.findall(path.read_text(errors="replace")))
    return names


def test_every_environment_variable_in_the_code_is_in_the_settings_and_the_reference(site):
    found = _env_names_in_code()
    assert len(found) >= 10, found  # the scan works
    assert found - set(settings.by_name()) == set(), "add these to autograder/settings.py"
    page = _text(site / "reference" / "configuration" / "index.html")
    assert [s.name for s in settings.SETTINGS if s.name not in page] == []


def test_every_cli_option_is_in_the_reference(site):
    page = _text(site / "reference" / "cli" / "index.html")
    options = docgen.cli_options()
    assert {"data", "build", "grade"} <= set(options)
    assert "--verbose" in options["grade"]
    missing = [f"{cmd} {opt}" for cmd, opts in options.items() for opt in opts if opt not in page]
    assert missing == []
    assert all(f"python -m autograder {cmd}" in page for cmd in options)


def test_the_readme_links_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?:docs/)[^)#\s]+)", readme)
    assert targets, "the README links into the docs"
    assert [t for t in targets if not (ROOT / t).exists()] == []


# --- the generated reference: every field its own text, every character as written ---------------

class _PageParser(HTMLParser):
    """A built page's article: its headings, each with the tables under it (rows of cell texts), and every
    tag name inside it."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, list[list[list[str]]]]] = [("", [])]
        self.tags: set[str] = set()
        self.depth = 0  # inside the article: its nesting depth
        self.heading: list[str] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if not self.depth:
            if tag == "article" and "md-content__inner" in (dict(attrs).get("class") or ""):
                self.depth = 1
            return
        self.depth += tag == "article"
        self.tags.add(tag)
        if tag in ("h1", "h2", "h3", "h4"):
            self.heading = []
        elif tag == "table":
            self.sections[-1][1].append([])
        elif tag == "tr":
            self.sections[-1][1][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if not self.depth:
            return
        self.depth -= tag == "article"
        if tag in ("h1", "h2", "h3", "h4") and self.heading is not None:
            self.sections.append(("".join(self.heading).replace("¶", "").strip(), []))
            self.heading = None
        elif tag in ("td", "th") and self.cell is not None:
            self.sections[-1][1][-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.depth:
            for sink in (self.heading, self.cell):
                if sink is not None:
                    sink.append(data)


def _article(page: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(page.read_text())
    return parser


def _as_rendered(markdown_text: str) -> str:
    """What a reader sees of a text with code spans: the text without the spans' backticks."""
    return " ".join(re.sub(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", lambda m: m.group(2), markdown_text).split())


def _built(site: Path, rel: str) -> Path:
    """The HTML page MkDocs builds from ``docs/<rel>`` (directory URLs: ``a/b.md`` -> ``a/b/index.html``)."""
    stem = rel.removesuffix(".md")
    return site / (f"{stem}.html" if stem == "index" or stem.endswith("/index") else f"{stem}/index.html")


def _pages_with(section: str) -> list[str]:
    marker = f"<!-- generated: {section} -->"
    return sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md") if marker in p.read_text())


def test_every_field_of_every_generated_table_shows_its_own_code_comment(site):
    """Each documented dataclass's table on each page that generates it: one row per field, whose "what"
    cell is the field's own comment in the code, every character as written (``<out>``, ``[...]``)."""
    checked = 0
    for section, classes in docgen.documented_dataclasses().items():
        pages = _pages_with(section)
        assert pages, f"no page generates {section}"
        for rel in pages:
            article = _article(_built(site, rel))
            for cls in classes:
                tables = [t for heading, tables in article.sections
                          if re.split(r"[^\w]", heading, maxsplit=1)[0] == cls.__name__ for t in tables]
                assert len(tables) == 1, f"{rel}: one table for {cls.__name__}, found {len(tables)}"
                header, *rows = tables[0]
                assert header[0] == "field" and header[-1] == "what", header
                shown = {row[0]: row[-1] for row in rows}
                comments = docgen.field_comments(cls)
                names = [f.name for f in dataclasses.fields(cls)]
                assert list(shown) == names, f"{rel}: {cls.__name__}'s rows"
                for name in names:
                    text = comments.get(name, "")
                    assert text, f"{cls.__module__}.{cls.__name__}.{name} has no comment in the code"
                    assert shown[name] == _as_rendered(text), f"{rel}: {cls.__name__}.{name}"
                    # a comment block that documents two fields names the second one as a label
                    others = [o for o in names if o != name and re.search(rf"(?:^|[.;]\s+){o}:", text)]
                    assert not others, f"{cls.__name__}.{name}'s comment documents {others} too: give each its own"
                    checked += 1
    assert checked > 100


# tags Markdown and this site's extensions write in a page's article; any other tag is text lost to the
# browser (a placeholder such as <out> read as HTML)
MARKDOWN_TAGS = {"article", "a", "p", "h1", "h2", "h3", "h4", "h5", "h6", "code", "pre", "span", "em", "strong",
                 "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "img", "div", "blockquote", "hr",
                 "br", "sup", "sub", "del", "dl", "dt", "dd", "details", "summary"}


def test_no_page_loses_text_to_html(site):
    lost = {str(p.relative_to(site)): sorted(_article(p).tags - MARKDOWN_TAGS) for p in site.rglob("*.html")}
    assert {page: tags for page, tags in lost.items() if tags} == {}, "write these as `code` or escape them"
    cli = _text(site / "reference" / "cli" / "index.html")
    assert "Where to leave <assignment>/autograder.zip" in cli and "solutions/<name>.ipynb" in cli
    assert "pip install 'cnn-autograder[ray]'" in cli


@dataclasses.dataclass
class _Documented:
    plain: int = 1  # its own comment
    # two lines of comment
    # above the field
    block: int = 2
    # above
    both: int = 3  # and after
    undocumented: int = 4
    # a comment and then a blank line

    loose: int = 5
    multi: dict = dataclasses.field(
        default_factory=dict)  # on the field's last line
    first: int = 6  # the first field's comment
    # the second field's, right after the first's
    second: int = 7
    pragma: int = 8  # type: ignore[assignment]


@dataclasses.dataclass
class _MoreDocumented(_Documented):
    added: int = 9  # a subclass's field


def test_field_comments_give_each_field_its_own_text():
    assert docgen.field_comments(_MoreDocumented) == {
        "plain": "its own comment", "block": "two lines of comment above the field", "both": "above and after",
        "multi": "on the field's last line", "first": "the first field's comment",
        "second": "the second field's, right after the first's", "added": "a subclass's field"}


@pytest.mark.parametrize("text", [
    "Where to leave <out>/autograder.zip", "pip install 'cnn-autograder[ray]'", "a *b* _c_ d__e__", "a | b",
    "x & y &lt; z", "a back\\slash", "a lone ` backtick", "<script>alert(1)</script>"])
def test_md_text_renders_as_written(text):
    import markdown

    # alone, and with code spans (which stay code) around it
    for wrapped in [text] + ([f"`<name>` {text} ``a `b` | c``"] if "`" not in text else []):
        page = markdown.markdown(docgen._table(["what"], [[docgen.md_text(wrapped)]]), extensions=["tables"])
        cell = re.search(r"<td>(.*)</td>", page, re.S).group(1)
        assert "<script" not in cell
        assert html.unescape(re.sub(r"<[^>]+>", "", cell)) == _as_rendered(wrapped)


def test_help_texts_lose_nothing_to_rich_markup():
    """Typer reads help texts as Rich markup: ``[ray]`` would vanish from ``--help`` unless written ``\\[ray]``."""
    from rich.text import Text
    from typer.testing import CliRunner

    from autograder.cli import app

    for name, cmd in docgen.cli_commands().items():
        for text in [cmd.help, *(getattr(p, "help", None) for p in cmd.params)]:
            text = inspect.cleandoc(text or "")
            assert Text.from_markup(text).plain == text.replace("\\[", "["), f"{name}: {text!r}"
    shown = CliRunner().invoke(app, ["grade", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert shown.exit_code == 0, shown.output
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", shown.output).split())
    assert "pip install 'cnn-autograder[ray]'" in flat
    assert "nbgrader's submitted/ folder" in flat


def test_the_configuration_object_is_read_from_the_settings_and_travels_whole(monkeypatch):
    """``settings.current()`` is the one reading of the ``CNN_GRADER_*`` variables; a worker that inherits none
    (the retraining worker, a Ray node) gets the object and installs it, and reads the same configuration."""
    for name in settings.by_name():
        monkeypatch.delenv(name, raising=False)
    default = settings.current()
    assert default.isolation == "auto" and default.retrain_slots is None and default.deterministic is None
    assert default.cache_dir == Path(settings.CACHE.default).expanduser()
    monkeypatch.setenv(settings.ISOLATION.name, " BWRAP ")
    monkeypatch.setenv(settings.PRIVATE_PATHS.name, os.pathsep.join(["/srv/out", "/srv/in"]))
    monkeypatch.setenv(settings.RETRAIN_THREADS.name, "3")
    monkeypatch.setenv(settings.RETRAIN_SLOTS.name, "2")
    monkeypatch.setenv(settings.DETERMINISTIC.name, "0")
    monkeypatch.setenv(settings.PROBE_THREADS.name, "not a number")  # as before: TensorFlow's default
    monkeypatch.setenv(settings.CACHE.name, "/srv/cache")
    config = settings.current()
    assert (config.isolation, config.private_paths, config.retrain_threads, config.retrain_slots) == (
        "bwrap", ("/srv/out", "/srv/in"), 3, 2)
    assert config.deterministic is False and config.probe_threads == 0
    assert config.calibration_file == Path("/srv/cache/host-calibration.json")
    travelled = settings.GraderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert travelled == config
    for name in settings.by_name():  # a worker that inherited nothing
        monkeypatch.delenv(name, raising=False)
    settings.install(travelled)
    assert settings.current() == config
    shell_only = {settings.GRADESCOPE_ROOT.name, settings.PYTHON.name}  # read by run_autograder's shell
    assert set(config.environment()) | shell_only == set(settings.by_name())
