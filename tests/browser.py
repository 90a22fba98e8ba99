"""The real browser of the browser tests: the system's Chromium, driven by Playwright.

Playwright's own browser download cannot be reached from CI, so it launches the Debian package's
binary (`.ci/run` installs it there). Without one the tests skip, naming the package.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, sync_playwright

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_CHROMIUM = "needs Chromium (Debian: apt-get install chromium)"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NEEDS_CHROMIUM)

# Every wait of a browser test, in ms: a page of the local platform loads in well under a second.
TIMEOUT_MS = 15_000


@contextlib.contextmanager
def chromium_page() -> Iterator[Page]:
    """A blank page in a new headless Chromium; the browser and Playwright's driver are gone
    when the block ends, however it ends."""
    assert CHROMIUM is not None, NEEDS_CHROMIUM
    with sync_playwright() as playwright:
        # Chromium's own process sandbox cannot start as root (CI) and is not what the tests
        # check: they check the platform's web sandboxing (CSP, origins).
        browser = playwright.chromium.launch(executable_path=CHROMIUM, chromium_sandbox=False)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()
