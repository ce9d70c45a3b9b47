"""Screenshots of the /ui page reading each example article, for docs/ (headless Debian chromium).

Against a running service (`stancewatch serve`, any model; docs/ used the production model):

    python bench/screenshots.py [--url http://127.0.0.1:3000] [--key KEY] [--out docs] [examples/*.txt]

For each article: pick the file as a person would (the file chooser), press the button, hover the
first sentence that has a stance for the shown target, and save `ui-<name>.png`. Every request
outside the service is refused and counted, so a screenshot also shows that the page works offline.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("articles", nargs="*", default=sorted(str(p) for p in (REPO / "examples").glob("*.txt")))
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--key", default="")
    ap.add_argument("--out", default=str(REPO / "docs"))
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
        for article in args.articles:
            ctx = b.new_context(viewport={"width": args.width, "height": 900})
            outside: list[str] = []
            ctx.route(
                "**/*",
                lambda route, outside=outside: (
                    route.continue_()
                    if route.request.url.startswith(args.url)
                    else (outside.append(route.request.url), route.abort())
                ),
            )
            page = ctx.new_page()
            page.goto(f"{args.url}/ui")
            if args.key:
                page.fill("#key", args.key)
            page.set_input_files("#file", article)
            page.locator("#message").filter(has_text="Loaded").wait_for()
            page.click("#read")
            page.wait_for_selector("#article .s")
            stance = page.locator('#article .s[data-label="favor"], #article .s[data-label="against"]')
            (stance.first if stance.count() else page.locator("#article .s").first).hover()
            png = Path(args.out) / f"ui-{Path(article).stem}.png"
            page.screenshot(path=str(png), full_page=True)
            n = page.locator("#article .s").count()
            print(f"{png}: {n} sentences, {stance.count()} with a stance, {len(outside)} outside requests")
            ctx.close()
        b.close()


if __name__ == "__main__":
    main()
