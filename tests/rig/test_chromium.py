"""The headless Chromium rig sees what a console shows in red, so that "no console error" in
the dashboard's test can fail."""
import pytest

from tests.rig.chromium import BrowserUnavailable, Chromium

PAGE = ("data:text/html,<body><p id=x>0</p><script>console.log('fine');console.warn('meh');"
        "document.getElementById('x').textContent='2';console.error('boom', 42);"
        "setTimeout(()=>{undefinedFunction()},0);</script></body>")


def test_console_errors_and_exceptions_are_collected(tmp_path):
    try:
        browser = Chromium(tmp_path / "profile").start()
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    with browser:
        page = browser.new_page()
        page.navigate(PAGE)
        assert page.wait_for("document.getElementById('x').textContent") == "2"
        page.wait_for("true")                                 # one more round trip for late events
        assert page.errors[0] == "console.error: boom 42"
        assert len(page.errors) == 2 and "ReferenceError: undefinedFunction is not defined" in page.errors[1]
