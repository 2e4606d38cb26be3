"""Every relative link in the README resolves: the file exists and, for a docs page, so does the anchor.
(`make docs` checks the links inside docs/ with mkdocs' strict validation; the README is not a page of it.)"""

from __future__ import annotations

import re

from markdown.extensions.toc import slugify

from tests.conftest import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: str) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+?)\s*$", (REPO / page).read_text(), re.M)
    return {slugify(heading.replace("`", ""), "-") for heading in headings}


def test_every_relative_link_in_the_readme_resolves():
    links = [link for link in LINK.findall((REPO / "README.md").read_text()) if "://" not in link]
    assert len(links) >= 10
    for link in links:
        path, _, anchor = link.partition("#")
        assert (REPO / path).exists(), link
        if anchor:
            assert anchor in anchors(path), link
