"""Time a new user's first start: `make serve` from a fresh clone with an empty model store.

    python bench/first_start.py                 # clones this repository's HEAD into a temp folder
    python bench/first_start.py --keep-venv DIR # reuse an existing .venv (times training + serving only)
    python bench/first_start.py --wait-full     # also wait until the service serves the full-recipe model

Prints when set-up ended (the first line `stancewatch init` prints), when the quick model was
saved, and when `POST /predict` first answered 200, all from the start of `make serve`. pip's cache
is used as it is (the issue allows a warm cache). Afterwards it stops what it started, by PID: the
`make serve` process group (BentoML's server and workers) and the background full-recipe training
whose PID `stancewatch init` writes to the store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    body = json.dumps({"sentences": ["Tokyo will not revise its position under pressure from anyone."]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _serving_tag(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=5) as r:
            return json.loads(r.read())["tag"]
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-venv", type=Path, help="copy this .venv into the clone instead of creating one")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--wait-full",
        action="store_true",
        help="after the first answer, wait until GET /model names another (the full) version",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="stancewatch-first-start-"))
    clone, home = work / "clone", work / "bentoml"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    if args.keep_venv:
        shutil.copytree(args.keep_venv, clone / ".venv", symlinks=True)
    port = _free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }  # the log lines are the time marks
    log_path = work / "serve.log"
    marks: dict[str, float] = {}
    t0 = time.time()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["make", "serve", f"PORT={port}"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while time.time() - t0 < args.timeout:
            text = log_path.read_text(errors="replace")
            if "setup" not in marks and "first start: training" in text:
                marks["setup"] = time.time() - t0
            if "trained" not in marks and "new model version" in text:
                marks["trained"] = time.time() - t0
            if proc.poll() is not None:
                print(f"make serve exited with {proc.returncode}; log: {log_path}\n{text[-3000:]}", file=sys.stderr)
                return 1
            if "first_answer" not in marks and "trained" in marks and _answers(port):
                marks["first_answer"] = time.time() - t0
                first_tag = _serving_tag(port)
                if not args.wait_full:
                    break
            if "first_answer" in marks and args.wait_full:
                tag = _serving_tag(port)
                if tag and tag != first_tag and _answers(port):
                    marks["full_served"] = time.time() - t0
                    break
            time.sleep(2)
        else:
            print(f"no answer within {args.timeout:.0f} s; log: {log_path}", file=sys.stderr)
            return 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        pid_file = home / "stancewatch-full-training.pid"
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)  # its own session: a group of its own
            except (ProcessLookupError, ValueError):
                pass
    print(
        f"first start from a fresh clone ({'venv copied' if args.keep_venv else 'set-up included'}), "
        f"empty BENTOML_HOME, port {port}:"
    )
    for name, label in (
        ("setup", "set-up done"),
        ("trained", "quick model saved"),
        ("first_answer", "first POST /predict 200"),
        ("full_served", "full model served"),
    ):
        if name in marks:
            print(f"  {label:26s} {marks[name]:7.1f} s  ({marks[name] / 60:.1f} min)")
    print(f"log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
