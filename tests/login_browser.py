#!/usr/bin/env python3
"""A real browser (Debian's chromium, driven headless by Playwright) on the bridge's login
page, for the integration tests.

Usage: login_browser.py URL USERNAME WRONG_PASSWORD RIGHT_PASSWORD

Opens URL, logs in with the wrong password, then (on the page that comes back) with the
right one. Prints one JSON line per submitted form on stdout:
    {"step": "wrong", "status": 200, "alert": "...", "password_type": "password",
     "autocomplete": "current-password"}
    {"step": "right", "status": 200, "text": "..."}
Exits 2, with the reason on stderr, when Playwright or chromium is missing; 1 when the page
does not behave.
"""
import json
import os
import sys
import tempfile

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(what):
    sys.stderr.write(what + ": run the tests with scripts/test.sh, which installs it\n")
    sys.exit(2)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    url, username, wrong, right = sys.argv[1:5]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the Python package playwright is not installed in " + sys.executable)
    if not os.access(CHROMIUM, os.X_OK):
        missing(CHROMIUM + " is missing (Debian package chromium)")
    with tempfile.TemporaryDirectory(prefix="isthmus-chromium-") as profile, sync_playwright() as p:
        # A fresh profile each run; Playwright passes it as --user-data-dir.
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS
        )
        page = browser.new_page()
        page.set_default_timeout(30000)
        first = page.goto(url)
        if first is None or first.status != 200:
            sys.stderr.write("GET %s answered %s\n" % (url, first and first.status))
            sys.exit(1)
        password = page.locator("input[type=password]")
        autocomplete = password.get_attribute("autocomplete")
        page.locator("input[autocomplete=username]").fill(username)
        password.fill(wrong)
        with page.expect_navigation() as nav:
            page.get_by_role("button", name="Log in").click()
        emit({
            "step": "wrong",
            "status": nav.value.status if nav.value else None,
            "alert": page.get_by_role("alert").inner_text(),
            "password_type": password.get_attribute("type"),
            "autocomplete": autocomplete,
        })
        # The page that came back is a new form on the same link: try again.
        page.locator("input[autocomplete=username]").fill(username)
        page.locator("input[type=password]").fill(right)
        with page.expect_navigation() as nav:
            page.get_by_role("button", name="Log in").click()
        emit({
            "step": "right",
            "status": nav.value.status if nav.value else None,
            "text": page.locator("main").inner_text(),
        })
        browser.close()


if __name__ == "__main__":
    main()
