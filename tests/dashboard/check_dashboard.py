#!/usr/bin/python3
"""Renders the dashboard in headless Chromium and checks what a person
would see: the header numbers, one card per topic with its item names, the
segment chart. Keeps a screenshot next to the build.

  check_dashboard.py [--url URL] [--serve-fake PATH] [--k K]
                     [--screenshot PNG] [--dom HTML]

Without --url it starts serve_fake (planted data through the real http
code) on an ephemeral port. With --url it checks a running nmfd; the
expected k and item names are then read from the same server's /events
stream. Exit 0 pass, 1 fail, 77 skip (no chromium).
"""
import argparse
import base64
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from html.parser import HTMLParser

CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--window-size=1400,1300", "--remote-debugging-pipe",
]
WIDTH, HEIGHT = 1400, 1300


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children, self.text = [], []

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def all_text(self):
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}


class Tree(HTMLParser):
    """Just enough of a DOM: elements, attributes, text."""

    def __init__(self):
        super().__init__()
        self.root = Node("#root", [], None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.text.append(data)


def by_id(root, i):
    return next((n for n in root.walk() if n.attrs.get("id") == i), None)


def by_class(root, c):
    return [n for n in root.walk() if c in n.classes()]


def number(text):
    t = text.strip().replace(",", "")
    return float(t) if re.fullmatch(r"-?[0-9.]+(e[-+]?[0-9]+)?", t) else None


def read_epoch(base, timeout=10.0):
    """The newest "epoch" event seen within 1.5 s of the first one (the
    server replays recent history on connect, then streams live)."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80,
                                      timeout=timeout)
    latest, event, first = None, None, 0.0
    try:
        conn.request("GET", u.path.rstrip("/") + "/events")
        r = conn.getresponse()
        if r.status != 200:
            fail("%sevents: HTTP %d" % (base, r.status))
        conn.sock.settimeout(0.5)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if latest is not None and time.time() > first + 1.5:
                break
            try:
                line = r.readline()
            except (TimeoutError, OSError):
                if latest is not None:
                    break
                continue
            if not line:
                break
            line = line.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "epoch":
                if latest is None:
                    first = time.time()
                latest = json.loads(line[5:].strip())
    finally:
        conn.close()
    if latest is None:
        fail("no epoch event from %sevents within %.0f s" % (base, timeout))
    return latest


class Chrome:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3
    in, fd 4 out, NUL-framed JSON). --dump-dom cannot be used here: the
    page holds an EventSource open forever, so "network idle" and virtual
    time budgets never come, and a plain dump races the first event."""

    def __init__(self, exe, profile):
        self.to_r, self.to_w = os.pipe()
        self.from_r, self.from_w = os.pipe()
        shell = 'exec "$@" 3<&%d 4>&%d' % (self.to_r, self.from_w)
        self.p = subprocess.Popen(
            ["/bin/sh", "-c", shell, "sh", exe] + CHROME_FLAGS +
            ["--user-data-dir=" + profile, "about:blank"],
            pass_fds=(self.to_r, self.from_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(self.to_r)
        os.close(self.from_w)
        self.buf, self.next_id, self.session = b"", 0, None

    def call(self, method, params=None, timeout=30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        fail("%s: %s" % (method, reply["error"]))
                    return reply.get("result", {})
            left = deadline - time.time()
            if left <= 0 or not select.select([self.from_r], [], [], left)[0]:
                fail("chromium: no answer to %s in %.0f s" % (method, timeout))
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                fail("chromium exited (during %s)" % method)
            self.buf += chunk

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"})
        self.session = self.call("Target.attachToTarget", {
            "targetId": target["targetId"], "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
            "mobile": False})
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr,
                                           "returnByValue": True})
        return r.get("result", {}).get("value")

    def screenshot(self, path):
        m = self.call("Page.getLayoutMetrics")
        h = max(HEIGHT, int(m.get("cssContentSize", {}).get("height", 0)))
        png = self.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WIDTH, "height": h,
                     "scale": 1}})
        with open(path, "wb") as f:
            f.write(base64.b64decode(png["data"]))

    def close(self):
        try:
            self.session = None
            self.call("Browser.close", timeout=10)
        except SystemExit:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        os.close(self.to_w)
        os.close(self.from_r)


def check_dom(html, truth, k):
    tree = Tree()
    tree.feed(html)
    root = tree.root
    body = next((n for n in root.walk() if n.tag == "body"), None)
    if body is None or "data-epoch" not in body.attrs:
        return "no epoch rendered yet"
    for i in ("epoch", "users", "items", "events", "rate", "loss"):
        n = by_id(root, i)
        if n is None:
            fail("#%s missing" % i)
        if number(n.all_text()) is None:
            fail("#%s shows %r, not a number" % (i, n.all_text()))
    lag = by_id(root, "lag").all_text().strip()
    if number(lag) is None and lag != "n/a":
        fail("#lag shows %r" % lag)
    epoch = number(by_id(root, "epoch").all_text())
    if not 1 <= epoch <= truth["epoch"]:
        fail("#epoch %s outside 1..%d" % (epoch, truth["epoch"]))

    cards = by_class(root, "topic-card")
    topics = sorted(int(c.attrs.get("data-topic", -1)) for c in cards)
    if topics != list(range(k)):
        fail("topic cards %s, want 0..%d" % (topics, k - 1))
    want = {t["topic"]: [str(p[0]) for p in t["top"]] for t in truth["topics"]}
    for c in cards:
        j = int(c.attrs["data-topic"])
        names = [n.all_text().strip() for n in by_class(c, "item")]
        if not names or not all(names):
            fail("card %d shows no item names" % j)
        users = by_class(c, "users")
        if not users or number(users[0].all_text()) is None:
            fail("card %d shows no user count" % j)
        cont = by_class(c, "cont")
        m = re.fullmatch(r"continuity ([01]\.[0-9]{3})",
                         cont[0].all_text().strip() if cont else "")
        if not m:
            fail("card %d shows no continuity: %r" %
                 (j, cont[0].all_text() if cont else None))
        if (float(m.group(1)) < 0.9) != ("changed" in c.classes()):
            fail("card %d: continuity %s but marked changed: %s" %
                 (j, m.group(1), "changed" in c.classes()))
        # The page shows at most 10, strongest first; most must be the
        # server's current top items for that topic (a live model may
        # reorder a few between the page's epoch and ours).
        known = sum(1 for n in names if n in want.get(j, []))
        if known * 2 < len(names):
            fail("card %d names %s, server's top %s" % (j, names, want.get(j)))
        print("topic %d: %d users; %s" % (j, number(users[0].all_text()),
                                          ", ".join(names[:4])))

    seg = by_id(root, "segments")
    areas = [n for n in seg.walk() if n.tag == "path" and
             "area" in n.classes()] if seg else []
    if len(areas) != k:
        fail("#segments svg has %d areas, want %d" % (len(areas), k))
    print("header: epoch %s, users %s, events %s, rate %s ev/s, lag %s, "
          "loss %s" % tuple(by_id(root, i).all_text().strip() for i in
                            ("epoch", "users", "events", "rate", "lag",
                             "loss")))
    return None


# Each card's topic id, colour and identity (a mark left on the element),
# in page order, with the users it shows.
CARDS_JS = """JSON.stringify(Array.prototype.map.call(
  document.querySelectorAll('.topic-card'), function (c) {
    if (c.__mark === undefined) c.__mark = Math.random();
    return [c.getAttribute('data-topic'),
            getComputedStyle(c).getPropertyValue('--c').trim(), c.__mark,
            c.querySelector('.users').textContent,
            c.classList.contains('changed')];
  }))"""


def check_stable(chrome, seconds, k):
    """Over a few epochs every topic keeps its card (the same element),
    its place (topic id order, whatever the sizes) and its colour; the
    cards change only their numbers. Returns how many epochs went by, and
    whether the sizes shown were ever out of id order and a card marked
    changed (so that the check meant something)."""
    e0 = int(chrome.eval("document.body.dataset.epoch"))
    first = json.loads(chrome.eval(CARDS_JS))
    unsorted = changed = False
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.05)
        now = json.loads(chrome.eval(CARDS_JS))
        if [c[:3] for c in now] != [c[:3] for c in first]:
            fail("cards moved, recoloured or rebuilt between epochs:\n%s\n%s"
                 % ([c[:2] for c in first], [c[:2] for c in now]))
        sizes = [number(c[3]) for c in now]
        unsorted |= sizes != sorted(sizes, reverse=True)
        changed |= any(c[4] for c in now)
    if [int(c[0]) for c in first] != list(range(k)):
        fail("cards not in topic id order: %s" % [c[0] for c in first])
    return int(chrome.eval("document.body.dataset.epoch")) - e0, unsorted, changed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", help="dashboard URL (default: start serve_fake)")
    ap.add_argument("--serve-fake", help="path of the serve_fake program")
    ap.add_argument("--k", type=int, help="expected number of topics")
    ap.add_argument("--screenshot", help="PNG to keep")
    ap.add_argument("--dom", help="where to keep the dumped DOM")
    a = ap.parse_args()

    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chrome and os.access("/usr/bin/chromium", os.X_OK):
        chrome = "/usr/bin/chromium"
    if not chrome:
        print("SKIP: chromium not installed")
        sys.exit(77)
    build = os.environ.get("NMFD_BUILD", ".")
    shot = a.screenshot or os.path.join(build, "dashboard.png")
    dom_out = a.dom or os.path.join(build, "dashboard.dom.html")

    fake = None
    try:
        if a.url:
            url = a.url if a.url.endswith("/") else a.url + "/"
        else:
            exe = a.serve_fake or os.path.join(build, "tests", "serve_fake")
            fake = subprocess.Popen([exe, "--interval-ms", "60",
                                     "--lifetime-s", "170"],
                                    stdout=subprocess.PIPE, text=True)
            port = fake.stdout.readline().strip()
            if not port.isdigit():
                fail("serve_fake printed %r" % port)
            url = "http://127.0.0.1:%s/" % port
            time.sleep(3.2)  # about 50 epochs: a full replayed history

        truth = read_epoch(url)
        k = a.k or truth["k"]
        if len(truth["topics"]) != k:
            fail("server sends %d topics, expected k=%d" %
                 (len(truth["topics"]), k))

        with tempfile.TemporaryDirectory() as profile:
            chrome_ = Chrome(chrome, profile)
            try:
                chrome_.open(url)
                # Wait (real time) for the page to render an epoch, then a
                # little longer for the replayed history to be drawn.
                deadline = time.time() + 30
                while not chrome_.eval(
                        "document.body && document.body.dataset.epoch"):
                    if time.time() > deadline:
                        fail("the page rendered no epoch in 30 s")
                    time.sleep(0.2)
                time.sleep(1.5)
                html = chrome_.eval("document.documentElement.outerHTML")
                with open(dom_out, "w") as f:
                    f.write(html)
                truth = read_epoch(url)
                why = check_dom(html, truth, k)
                if why:
                    fail(why)
                epochs, unsorted, changed = check_stable(
                    chrome_, 3.0 if fake else 8.0, k)
                if fake is not None and not (epochs >= 10 and unsorted and
                                             changed):
                    fail("the stability check saw %d epochs, sizes out of "
                         "order %s, a changed topic %s" %
                         (epochs, unsorted, changed))
                print("cards stable over %d epochs (sizes out of id order: "
                      "%s)" % (epochs, unsorted))
                if os.path.exists(shot):
                    os.unlink(shot)
                chrome_.screenshot(shot)
            finally:
                chrome_.close()
        size = os.path.getsize(shot)
        with open(shot, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                fail("screenshot is not a PNG")
        if size < 20000:
            fail("screenshot only %d bytes: blank page?" % size)
        print("screenshot %s (%d bytes), dom %s" % (shot, size, dom_out))
    finally:
        if fake is not None:
            fake.send_signal(signal.SIGTERM)
            try:
                rc = fake.wait(timeout=10)
            except subprocess.TimeoutExpired:
                fake.kill()
                fake.wait()
                fail("serve_fake did not stop on SIGTERM")
            if rc != 0:
                fail("serve_fake exit %d (loop not drained?)" % rc)
    print("PASS")


if __name__ == "__main__":
    main()
