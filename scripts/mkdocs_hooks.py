"""MkDocs hook (mkdocs.yml: ``hooks:``): fills the reference pages from the code at build time.

A page's ``<!-- generated: NAME -->`` marker is replaced by :mod:`autograder.docgen`'s text for NAME
(the command line, the result schema, the environment variables, the configuration knobs), so the
reference cannot fall behind the code.
"""

from autograder import docgen


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs' hook signature
    return docgen.render(markdown)
