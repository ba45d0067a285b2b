"""Screenshots of TensorBoard's Time Series, Scalars and Custom Scalars tabs for real
``callax train`` runs, with headless Chromium: to look at what a user sees first.

    python tests/dashboard_screens.py [--out /work/screens] [--logdir DIR]

Without ``--logdir`` it trains PPO on CartPole with 3 seeds and SAC on Pendulum with 1 seed
(small budgets, ``python -m callax train``) into a temporary directory, one logdir per
algorithm. It starts TensorBoard (the ``tensorboard`` of this interpreter) on 127.0.0.1 for
each logdir and writes ``<algo>_<tab>.png`` (1600x1200) into ``--out``: ``timeseries``,
``scalars``, ``custom_scalars`` and ``timeseries_pinned`` (the address ``callax train``
prints, which pins the return above every group), and prints the first cards of that page.
Needs ``chromium`` (``apt-get install -y chromium``). Not a test: a person looks at the
pictures (tests/test_dashboard.py renders the pinned page and checks its first card).
"""

from __future__ import annotations

import argparse
import html.parser
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

from callax.cli._closing import dashboard_url

# name -> (extra query, tab). forceSVG: Time Series draws its lines with WebGL, which headless
# Chromium without a GPU leaves blank; TensorBoard's SVG renderer draws the same lines.
# "timeseries_pinned": the address `callax train` prints (the return pinned by TensorBoard's
# pinnedCards parameter), on this server.
SHOTS = {"timeseries": "timeseries", "scalars": "scalars", "custom_scalars": "custom_scalars",
         "timeseries_pinned": None}
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


def chromium() -> str | None:
    """The Chromium on the path, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(url: str, budget_ms: int, *action: str) -> bytes:
    """Run headless Chromium on ``url`` with a fresh profile (no pins or settings saved by
    an earlier page) and ``action`` (``--screenshot=...``, ``--dump-dom``); its stdout."""
    found = chromium()
    if found is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="callax-chromium-") as profile:
        return subprocess.run([found, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--virtual-time-budget={budget_ms}", *action, url],
                              check=True, capture_output=True, timeout=300).stdout


def shoot(url: str, png: str, budget_ms: int) -> None:
    """One screenshot of ``url``."""
    _chromium(url, budget_ms, f"--screenshot={png}")


def rendered_dom(url: str, budget_ms: int = 10000) -> str:
    """The page's DOM once Chromium has run it for ``budget_ms`` of virtual time (time
    that does not pass while requests to the server are pending)."""
    return _chromium(url, budget_ms, "--dump-dom").decode()


class _Cards(html.parser.HTMLParser):
    """The Time Series cards of a rendered page, in document (drawing) order: each card's
    heading is a ``tb-truncated-path`` whose title is the card's tag; the pinned cards are
    inside ``metrics-pinned-view``, the groups inside ``metrics-card-groups``."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.cards: list[tuple[str, str]] = []
        self.text: dict[str, list[str]] = {"pinned": [], "groups": []}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "metrics-pinned-view":
            self.section = "pinned"
        elif tag == "metrics-card-groups":
            self.section = "groups"
        elif tag == "tb-truncated-path" and self.section is not None:
            title = dict(attrs).get("title")
            if title:
                self.cards.append((self.section, title))

    def handle_data(self, data: str) -> None:
        if self.section is not None and data.strip():
            self.text[self.section].append(data.strip())


def time_series_cards(dom: str) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """``([(section, tag), ...], {section: [text, ...]})`` of a rendered Time Series page
    (:func:`rendered_dom`): its cards in drawing order, ``section`` ``"pinned"`` or
    ``"groups"``, and the text each section shows (card titles, run names, values)."""
    parser = _Cards()
    parser.feed(dom)
    return parser.cards, parser.text


def with_query(url: str, extra: str) -> str:
    """``url`` with ``extra`` (``key=value``) added to its query."""
    parts = urllib.parse.urlsplit(url)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=query))


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
            for name, tab in SHOTS.items():
                png = os.path.join(args.out, f"{algo}_{name}.png")
                url = (f"http://127.0.0.1:{port}/?forceSVG=true#{tab}" if tab else
                       with_query(dashboard_url(f"http://127.0.0.1:{port}/"), "forceSVG=true"))
                shoot(url, png, args.budget_ms)
                print(png)
            cards, _ = time_series_cards(rendered_dom(dashboard_url(f"http://127.0.0.1:{port}/")))
            print(f"{algo}: the printed address draws first {cards[:3]}")
        finally:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
