"""The explorer widget's layout in a real JupyterLab, in headless Chromium.

Starts JupyterLab on a small notebook that shows :meth:`rdprune.lab.widgets.Explorer.ui` for a
model of the zoo (random weights, synthetic curves), opens it in headless Chromium driven over
its DevTools protocol (``websocket-client``), runs the notebook with the file browser open,
and at each window size (1280×800 and 1440×900 by default) measures in the page whether the
controls sit on one row, whether the "budget" label and the toggle's buttons are whole, the gap
between the slider's readout and the "budget" label, and whether the bars image is shown at most
at its own width (never blown up); it saves a screenshot per size. Needs the ``chromium``
binary (Debian package ``chromium``); no network.

    python benchmarks/check_explorer_layout.py --model vit_tiny --out <folder for screenshots>

Prints one JSON line per size and exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

CELL = '''\
import warnings
warnings.simplefilter("ignore")
import numpy as np, pandas as pd
import rdprune as rp
from rdprune import masks as M
from rdprune.lab.widgets import Explorer
net = rp.models.build({model!r})
rng = np.random.default_rng(0)
a = np.linspace(0, 1, 21)
curves = pd.concat([pd.DataFrame({{"layer": k, "amount": a, "n_weights": m.weight.numel(),
                                  "distortion": rng.uniform(0.2, 5) * (np.exp(5 * a) - 1)}})
                    for k, m in M.prunable(net).items()], ignore_index=True)
Explorer(net, curves, max_states=1 << 14).ui(target=0.8, compare="lamp")
'''

# measured in the page: the explorer's control row and its parts
MEASURE = r'''
(() => {
  const slider = document.querySelector('.widget-slider');
  if (!slider) return null;
  const row = slider.parentElement;
  const label = [...row.querySelectorAll('.widget-label')].find(e => e.textContent.trim() === 'budget');
  const buttons = [...row.querySelectorAll('.widget-toggle-button')];
  const readout = slider.querySelector('.widget-readout');
  const img = document.querySelector('.jp-OutputArea .widget-image');
  const mid = e => { const r = e.getBoundingClientRect(); return (r.top + r.bottom) / 2; };
  const parts = [slider, label, ...buttons].filter(Boolean);
  const mids = parts.map(mid);
  return {
    row_width: Math.round(row.getBoundingClientRect().width),
    one_row: parts.length >= 4 && Math.max(...mids) - Math.min(...mids) < 8,
    label_text: label ? label.textContent : null,
    label_whole: !!label && label.scrollWidth <= label.clientWidth + 1,
    buttons_whole: buttons.length === 2 && buttons.every(b => b.scrollWidth <= b.clientWidth + 1),
    readout_gap_px: (label && readout) ? Math.round(label.getBoundingClientRect().left
                                                   - readout.getBoundingClientRect().right) : null,
    slider_width: Math.round(slider.getBoundingClientRect().width),
    image_px: img ? [img.naturalWidth, Math.round(img.getBoundingClientRect().width)] : null,
    left_panel_open: !document.querySelector('#jp-left-stack').classList.contains('lm-mod-hidden'),
  };
})()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn, timeout: float, what: str, every: float = 1.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            got = fn()
        except Exception:  # not up yet
            got = None
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


class Page:
    """The smallest DevTools client: send a command, wait for its answer."""

    def __init__(self, ws_url: str):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=600, suppress_origin=True)
        self.n = 0

    def send(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_tiny")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "explorer-layout"))
    ap.add_argument("--sizes", default="1280x800,1440x900")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for the kernel to draw")
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("no chromium binary: apt-get install -y chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="explorer-layout-"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL.format(model=args.model))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, work / "explorer.ipynb")
    lab_port, cdp_port, token = free_port(), free_port(), "layout"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "lib"),
                                                                    os.environ.get("PYTHONPATH")])))
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={lab_port}",
             "--ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}",
             "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={work / 'ws'}",
             f"--LabApp.user_settings_dir={work / 'settings'}",
             "--allow-root"],
            env=env, stdout=open(work / "lab.log", "w"), stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{lab_port}"
        wait_for(lambda: urllib.request.urlopen(f"{base}/api/status?token={token}").status == 200,
                 180, "JupyterLab")
        w, h = map(int, args.sizes.split(",")[0].split("x"))
        procs.append(subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={cdp_port}", f"--window-size={w},{h}",
             f"--user-data-dir={work / 'chrome'}", "about:blank"],
            stdout=open(work / "chrome.log", "w"), stderr=subprocess.STDOUT))
        targets = wait_for(lambda: json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{cdp_port}/json")), 60, "Chromium")
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.send("Emulation.setDeviceMetricsOverride", width=w, height=h, deviceScaleFactor=1,
                  mobile=False)
        page.send("Page.navigate", url=f"{base}/lab/tree/explorer.ipynb?token={token}")
        wait_for(lambda: page.js("!!(window.jupyterapp && document.querySelector("
                                 "'.jp-Notebook .jp-Cell') && window.jupyterapp.serviceManager"
                                 ".sessions.running().next().value)"), 240, "the notebook")
        # run-all waits for the kernel to start; the file browser open, as in the report
        page.js("window.jupyterapp.shell.activateById('filebrowser');"
                "window.jupyterapp.commands.execute('notebook:run-all-cells')")
        try:
            wait_for(lambda: page.js("(() => { const i = document.querySelector("
                                     "'.jp-OutputArea .widget-image'); return !!(i && "
                                     "i.naturalWidth) })()"), args.timeout,
                     "the explorer's first figure", every=3)
        except TimeoutError:  # what the page shows instead
            (out / "timeout.png").write_bytes(base64.b64decode(page.send(
                "Page.captureScreenshot", format="png")["data"]))
            print(page.js("document.querySelector('.jp-OutputArea')?.innerText?.slice(-2000)"))
            raise
        failed = False
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            page.send("Emulation.setDeviceMetricsOverride", width=w, height=h,
                      deviceScaleFactor=1, mobile=False)
            time.sleep(2)  # Lumino lays out on resize
            page.js("window.jupyterapp.shell.activateById('filebrowser')")
            time.sleep(1)
            m = page.js(MEASURE) or {}
            shot = out / f"explorer_{args.model}_{w}x{h}.png"
            shot.write_bytes(base64.b64decode(page.send("Page.captureScreenshot",
                                                        format="png")["data"]))
            image = m.get("image_px") or [0, 1]
            ok = bool(m.get("one_row") and m.get("label_whole") and m.get("buttons_whole")
                      and (m.get("readout_gap_px") or 0) >= 8 and image[1] <= image[0])
            failed |= not ok
            print(json.dumps({"size": size, "ok": ok, **m, "screenshot": str(shot)}), flush=True)
        return 1 if failed else 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
