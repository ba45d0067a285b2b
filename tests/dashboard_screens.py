"""Screenshots of TensorBoard's Time Series, Scalars and Custom Scalars tabs for real
``callax train`` runs, with headless Chromium: to look at what a user sees first.

    python tests/dashboard_screens.py [--out /work/screens] [--logdir DIR]

Without ``--logdir`` it trains PPO on CartPole with 3 seeds and SAC on Pendulum with 1 seed
(small budgets, ``python -m callax train``) into a temporary directory, one logdir per
algorithm. It starts TensorBoard (the ``tensorboard`` of this interpreter) on 127.0.0.1 for
each logdir and writes ``<algo>_<tab>.png`` (1600x1200) into ``--out``. Needs ``chromium``
(``apt-get install -y chromium``). Not a test: a person looks at the pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

# name -> (extra query, tab). forceSVG: Time Series draws its lines with WebGL, which headless
# Chromium without a GPU leaves blank; TensorBoard's SVG renderer draws the same lines.
# "timeseries_pinned": the return pinned by the URL (TensorBoard's pinnedCards parameter).
PIN_RETURN = urllib.parse.quote(json.dumps([{"plugin": "scalars", "tag": "rollout/ep_rew_mean"}],
                                           separators=(",", ":")))
SHOTS = {"timeseries": ("", "timeseries"), "scalars": ("", "scalars"),
         "custom_scalars": ("", "custom_scalars"),
         "timeseries_pinned": (f"&pinnedCards={PIN_RETURN}", "timeseries")}
TRAIN = {
    "ppo": ["--algo", "ppo", "--env", "cartpole", "--seeds", "3", "--total-timesteps", "30000"],
    "sac": ["--algo", "sac", "--env", "pendulum", "--total-timesteps", "4000"],
}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--window-size=1600,1200"]


def train(logdir: str, algo: str) -> None:
    """``callax train`` for ``algo`` into ``logdir`` (run name ``algo``)."""
    subprocess.run([sys.executable, "-m", "callax", "train", *TRAIN[algo], "--logdir", logdir,
                    "--name", algo, "--no-progress"], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(logdir: str) -> tuple[subprocess.Popen, int]:
    """TensorBoard on ``logdir``, once its runs are listed (twice the same)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    previous, deadline = None, time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/timeseries/tags",
                                        timeout=10) as response:
                found = json.loads(response.read())
        except OSError:
            found = None
        if found and found == previous and found["scalars"]["runTagInfo"]:
            return server, port
        previous = found
        time.sleep(2)
    server.kill()
    raise RuntimeError(f"TensorBoard did not serve {logdir}")


def shoot(url: str, png: str, budget_ms: int) -> None:
    """One screenshot of ``url`` with a fresh Chromium profile."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="callax-chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", url],
                       check=True, capture_output=True, timeout=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/work/screens", help="where the PNGs go")
    parser.add_argument("--logdir", default=None,
                        help="a directory holding <algo>/ logdirs (default: train them now)")
    parser.add_argument("--budget-ms", type=int, default=30000,
                        help="Chromium's virtual time budget per page")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    root = args.logdir or tempfile.mkdtemp(prefix="callax-screens-")
    for algo in TRAIN:
        logdir = os.path.join(root, algo)
        if not os.path.isdir(os.path.join(logdir, algo)):
            train(logdir, algo)
        server, port = serve(logdir)
        try:
            for name, (query, tab) in SHOTS.items():
                png = os.path.join(args.out, f"{algo}_{name}.png")
                shoot(f"http://127.0.0.1:{port}/?forceSVG=true{query}#{tab}", png,
                      args.budget_ms)
                print(png)
        finally:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
