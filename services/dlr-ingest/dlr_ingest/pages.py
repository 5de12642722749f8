"""The HTML a recipient's phone shows: plain, small, readable by screen readers, no scripts, no tracking."""

from __future__ import annotations

from html import escape

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;\
line-height:1.5;color:#1a1a1a;background:#fff}}h1{{font-size:1.5rem}}</style>
</head>
<body>
<main>
<h1>{heading}</h1>
<p>{text}</p>
</main>
</body>
</html>
"""


def page(title: str, heading: str, text: str) -> str:
    return _PAGE.format(title=escape(title), heading=escape(heading), text=escape(text))


def unsubscribed(shop_name: str | None) -> str:
    shop = shop_name or "this sender"
    return page(
        "Unsubscribed",
        f"You are unsubscribed from {shop}",
        f"You will not receive marketing messages from {shop} at this number any more. "
        "There is nothing else to do.",
    )


def not_found() -> str:
    return page(
        "Link not found",
        "This link is not valid",
        "Check that the whole link from your message was opened. It may also have expired.",
    )


def unavailable() -> str:
    return page(
        "Try again shortly",
        "Something went wrong on our side",
        "Please open the link again in a minute.",
    )
