"""Takes docs/chat_page.png: starts `gptkit serve` on a checkpoint, chats through the page in headless Chromium, and
saves a screenshot once the replies have streamed in; knows nothing of the page's code beyond its element ids.

    python docs/make_chat_page_screenshot.py out/ft/chat            # any chat-capable checkpoint or run directory

Needs Debian's chromium and chromium-driver (/usr/bin) and selenium; nothing is downloaded (the driver's path is
given, so Selenium Manager never runs). The server runs in a child process, as a user would start it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DEFAULT_OUT = Path(__file__).resolve().parent / "chat_page.png"


def start_server(checkpoint: str, model_name: str) -> tuple[subprocess.Popen, str]:
    """`gptkit serve` on a free loopback port; returns the process and its base URL (from the line it prints)."""
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--checkpoint", checkpoint, "--port", "0",
                             "--model-name", model_name, "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        found = re.search(r"at (http://\S+)/v1 ", line)
        if found:
            return proc, found.group(1)
    proc.wait()
    sys.exit(f"gptkit serve exited {proc.returncode} before listening:\n{''.join(seen[-20:])}")


def chrome(width: int, height: int, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for_reply(driver, turns: int, timeout: float = 120) -> None:
    """Until the page shows `turns` finished assistant replies (or fail with the page's error)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = driver.execute_script(
            "return [...document.querySelectorAll('#messages .message.assistant')]"
            ".filter((b) => b.dataset.state && b.dataset.state !== 'streaming').length")
        error = driver.execute_script("const e = document.getElementById('error'); return e.hidden ? null : e.textContent")
        if error:
            sys.exit(f"the page shows an error: {error}")
        if done >= turns:
            return
        time.sleep(0.1)
    sys.exit("no reply within the time limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a chat-capable checkpoint or run directory (as for gptkit serve)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the PNG to write (default: {DEFAULT_OUT})")
    parser.add_argument("--model-name", default="gptkit-tiny-chat", help="the model's name shown in the page")
    parser.add_argument("--system", default="You are a friendly assistant. Answer briefly.")
    parser.add_argument("--message", action="append", help="a user turn (repeatable; default: two greetings)")
    parser.add_argument("--temperature", default="0.7")
    parser.add_argument("--max-tokens", default="60")
    parser.add_argument("--size", default="1200x760", help="the window's WIDTHxHEIGHT in pixels")
    args = parser.parse_args()
    messages = args.message or ["Hello! How are you today?", "What do you like to do?"]
    width, height = (int(x) for x in args.size.split("x"))
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            sys.exit(f"{path} is missing: apt-get install chromium chromium-driver")
    if not Path(args.checkpoint).exists():
        sys.exit(f"no checkpoint at {args.checkpoint}")

    proc, base = start_server(args.checkpoint, args.model_name)
    try:
        with tempfile.TemporaryDirectory(prefix="gptkit-chrome-") as profile:
            driver = chrome(width, height, profile)
            try:
                driver.get(f"{base}/")
                for field, value in (("system", args.system), ("temperature", args.temperature),
                                     ("max-tokens", args.max_tokens)):
                    element = driver.find_element("id", field)
                    element.clear()
                    element.send_keys(value)
                for turn, message in enumerate(messages, 1):
                    driver.find_element("id", "input").send_keys(message)
                    driver.find_element("id", "send").click()
                    wait_for_reply(driver, turn)
                driver.find_element("id", "input").send_keys("Tell me a story")  # a message being typed
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
            finally:
                driver.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) from {base}/ serving {args.checkpoint}")


if __name__ == "__main__":
    main()
