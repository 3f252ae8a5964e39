"""The report as PDF: the same HTML page laid out by WeasyPrint (``render``).

WeasyPrint lays out HTML and CSS with Pango (from the system), so the PDF shows exactly what
the page shows, the inline SVG plot included. The page is self-contained, and WeasyPrint's
fetcher is allowed ``data:`` URLs only all the same: rendering a report never touches the
network or the file system, whatever the page holds.
"""

from __future__ import annotations


def render(page: str) -> bytes:
    """``page`` (the report's HTML) as PDF bytes."""
    import weasyprint  # imported here: it loads Pango, which only the PDF needs

    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"})
    document: bytes = weasyprint.HTML(string=page, url_fetcher=fetcher).write_pdf()
    return document
