#!/usr/bin/python3
"""Who may read nmfd's data over HTTP. A listen address beyond loopback
without credentials stops the start (exit 2, file:line); with a bearer
token every data route answers 401 to a missing or wrong token and 200 to
the right one while the probes stay open, and the token shows in neither
the log nor --dump-config; HTTP Basic against a hashed password file; TLS
through curl and python3's ssl, and a certificate swapped on SIGHUP on
the same port (a mismatched or broken one keeps the running
certificate). Throwaway
certificates come from `openssl req -x509`; everything stays on
127.0.0.1."""
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Procs, check, folded_all, stop, wait_for  # noqa: E402
from http_common import (NMFD, connect_from, gen_events,  # noqa: E402
                         http_from, metric_lines, start_embedded)

TOKEN = "it-token-3f9a1c77d2e04b8e"


def run(args, **kw):
    return subprocess.run(args, capture_output=True, timeout=60, **kw)


def refused_beyond_loopback(ps):
    conf = os.path.join(ps.tmp, "open.conf")
    with open(conf, "w") as f:
        f.write("[http]\n# scraped by Prometheus\nlisten = 0.0.0.0:9464\n")
    r = run([NMFD, "--config", conf, "--check-config"])
    err = r.stderr.decode()
    check(r.returncode == 2, "--check-config exit %d" % r.returncode)
    check(("%s:3: http.listen = 0.0.0.0:9464: beyond loopback" % conf) in err,
          "file:line in %r" % err)
    # The daemon itself stops before it listens on anything.
    r = run([NMFD, "--config", conf, "--embedded-broker", "--set",
             "checkpoint.dir=" + os.path.join(ps.tmp, "refused")])
    check(r.returncode == 2, "nmfd exit %d: %s" % (r.returncode, r.stderr))
    check(b"beyond loopback" in r.stderr, "message: %r" % r.stderr)
    r = run([NMFD, "--set", "http.listen=:9464", "--check-config"])
    check(r.returncode == 2 and b"--set: http.listen = :9464: beyond" in
          r.stderr, "--set: %r" % r.stderr)
    # Explicitly allowed, or with credentials, the config passes.
    r = run([NMFD, "--config", conf, "--set",
             "http.allow_unauthenticated=true", "--check-config"])
    check(r.returncode == 0, "allowed: %r" % r.stderr)
    tok = os.path.join(ps.tmp, "token0")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    r = run([NMFD, "--config", conf, "--set", "http.token_file=" + tok,
             "--check-config"])
    check(r.returncode == 0, "with a token: %r" % r.stderr)
    r = run([NMFD, "--set", "http.token_file=" + tok, "--dump-config"])
    check(r.returncode == 0 and TOKEN.encode() not in r.stdout and
          ("token_file = %s ; --set" % tok).encode() in r.stdout,
          "--dump-config shows the path, not the token")
    print("listen beyond loopback without credentials: exit 2 with %s:3"
          % os.path.basename(conf))


def data_routes(ps):
    tok = os.path.join(ps.tmp, "token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    d = start_embedded(ps, "nmfd-token", sets=["http.token_file=" + tok,
                                               "snapshot.interval=500ms"])
    events = gen_events(ps)
    with open(events) as f:
        f.readline()
        user = f.readline().split(",")[0]
    ps.produce(d.brokers, events)
    wait_for(lambda: folded_all(d.port, 6000), 120, "events folded")
    good = {"Authorization": "Bearer " + TOKEN}
    wait_for(lambda: http_from("127.0.0.1", d.port, "/snapshot", good,
                               timeout=5)[0] == 200, 30, "a snapshot")
    status, body = http_from("127.0.0.1", d.port, "/users/" + user, good,
                             timeout=5)
    check(status == 200 and json.loads(body)["user"] == user,
          "/users/%s: %d %r" % (user, status, body[:100]))
    routes = ["/snapshot", "/users/%s" % user, "/topics", "/", "/events"]
    bad = [None, {"Authorization": "Bearer wrong-" + TOKEN},
           {"Authorization": "Bearer " + TOKEN[:-1]},
           {"Authorization": "Basic " + base64.b64encode(
               b"nmf:" + TOKEN.encode()).decode()},
           {"Authorization": TOKEN}]
    for path in routes:
        for h in bad:
            status, _ = http_events(d.port, path, h)
            check(status == 401, "%s with %r: %d" % (path, h, status))
        status, body = http_events(d.port, path, good)
        check(status == 200, "%s with the token: %d %r" % (path, status,
                                                           body[:100]))
    for path in ("/metrics", "/healthz", "/readyz"):
        status, _ = http_from("127.0.0.1", d.port, path, timeout=5)
        check(status == 200, "%s is open: %d" % (path, status))
    m = metric_lines(http_from("127.0.0.1", d.port, "/metrics", timeout=5)[1])
    # No header and an unknown scheme are "missing", the rest "wrong".
    check(m['nmfd_http_auth_failures_total{reason="missing"}'] ==
          2 * len(routes), "missing counted: %r" % m)
    check(m['nmfd_http_auth_failures_total{reason="wrong"}'] ==
          3 * len(routes), "wrong counted: %r" % m)
    check(stop(d) == 0, "nmfd exit")
    check(TOKEN not in ps.log("nmfd-token"), "the token is not logged")
    print("bearer token: %d data routes x %d bad credentials -> 401, the "
          "token -> 200, probes open" % (len(routes), len(bad)))


def http_events(port, path, headers):
    """Like http_from, but /events is read only to its first frame."""
    if path != "/events":
        return http_from("127.0.0.1", port, path, headers, timeout=5)
    s = connect_from("127.0.0.1", port, 5)
    try:
        req = "GET /events HTTP/1.1\r\nHost: x\r\n"
        for k, v in (headers or {}).items():
            req += "%s: %s\r\n" % (k, v)
        s.sendall((req + "\r\n").encode())
        data = b""
        deadline = time.time() + 5
        while b"\r\n\r\n" not in data and time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    return int(data.split()[1]), data


def basic_auth(ps):
    r = run(["openssl", "passwd", "-6", "scrape-me-please"])
    check(r.returncode == 0, "openssl passwd: %r" % r.stderr)
    pw = os.path.join(ps.tmp, "passwords")
    with open(pw, "w") as f:
        f.write("prometheus:%s\n" % r.stdout.decode().strip())
    d = start_embedded(ps, "nmfd-basic", sets=["http.password_file=" + pw,
                                               "http.auth_probes=true"])

    def get(user, password, path="/topics"):
        h = {}
        if user is not None:
            h["Authorization"] = "Basic " + base64.b64encode(
                ("%s:%s" % (user, password)).encode()).decode()
        return http_from("127.0.0.1", d.port, path, h, timeout=5)[0]

    check(get(None, None) == 401, "no credentials")
    check(get("prometheus", "wrong") == 401, "a wrong password")
    check(get("someone", "scrape-me-please") == 401, "an unknown user")
    check(get("prometheus", "scrape-me-please") == 200, "the password")
    check(get(None, None, "/metrics") == 401, "auth_probes closes /metrics")
    check(get("prometheus", "scrape-me-please", "/metrics") == 200,
          "/metrics with the password")
    check(stop(d) == 0, "nmfd exit")
    check("scrape-me-please" not in ps.log("nmfd-basic"), "not logged")
    print("basic auth against a sha512crypt password file: OK")


def make_cert(ps, name):
    cert = os.path.join(ps.tmp, name + ".crt")
    key = os.path.join(ps.tmp, name + ".key")
    r = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
             "/CN=%s" % name, "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", key, "-out", cert])
    check(r.returncode == 0, "openssl req: %r" % r.stderr)
    return cert, key


def tls_get(port, path, cafile, headers=None):
    ctx = ssl.create_default_context(cafile=cafile)
    req = urllib.request.Request("https://127.0.0.1:%d%s" % (port, path),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def peer_cn(port):
    """The CN of the certificate the server presents now."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s) as t:
            der = t.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    r = run(["openssl", "x509", "-noout", "-subject"], input=pem.encode())
    return r.stdout.decode().strip().rsplit("=", 1)[-1].strip()


def tls(ps):
    cert_a, key_a = make_cert(ps, "cert-a")
    cert_b, key_b = make_cert(ps, "cert-b")
    cert = os.path.join(ps.tmp, "tls.crt")
    key = os.path.join(ps.tmp, "tls.key")
    for src, dst in ((cert_a, cert), (key_a, key)):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
    # A pair that does not belong together is a config error: exit 2.
    for extra in (["--check-config"], ["--embedded-broker", "--set",
                                       "checkpoint.dir=" + ps.tmp + "/x"]):
        r = run([NMFD, "--set", "http.tls_cert_file=" + cert_a, "--set",
                 "http.tls_key_file=" + key_b] + extra)
        check(r.returncode == 2 and b"--set: http.tls_cert_file, "
              b"http.tls_key_file: " in r.stderr and b"do not match" in
              r.stderr, "mismatched pair %s: %d %r" % (extra[0], r.returncode,
                                                       r.stderr))
    tok = os.path.join(ps.tmp, "token-tls")
    with open(tok, "w") as f:
        f.write(TOKEN)
    d = start_embedded(ps, "nmfd-tls", sets=[
        "http.tls_cert_file=" + cert, "http.tls_key_file=" + key,
        "http.token_file=" + tok])
    url = "https://127.0.0.1:%d" % d.port
    auth = {"Authorization": "Bearer " + TOKEN}

    # curl, verifying against cert A.
    r = run(["curl", "-sS", "--max-time", "5", "--cacert", cert_a, "-o",
             "/dev/null", "-w", "%{http_code}", url + "/healthz"])
    check(r.stdout == b"200", "curl /healthz over TLS: %r %r" % (r.stdout,
                                                                 r.stderr))
    r = run(["curl", "-sS", "--max-time", "5", "--cacert", cert_a, "-H",
             "Authorization: Bearer " + TOKEN, "-o", "/dev/null", "-w",
             "%{http_code}", url + "/topics"])
    check(r.stdout == b"200", "curl /topics with the token: %r" % r.stdout)
    r = run(["curl", "-sS", "--max-time", "5", "--cacert", cert_a, "-o",
             "/dev/null", "-w", "%{http_code}", url + "/topics"])
    check(r.stdout == b"401", "curl /topics without the token: %r" % r.stdout)
    # python3's ssl, the same.
    check(tls_get(d.port, "/metrics", cert_a)[0] == 200, "ssl /metrics")
    check(tls_get(d.port, "/topics", cert_a, auth)[0] == 200, "ssl /topics")
    check(tls_get(d.port, "/topics", cert_a)[0] == 401, "ssl /topics, no token")
    # Plain HTTP on the TLS port gets no HTTP answer.
    s = connect_from("127.0.0.1", d.port, 5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        try:
            while len(got) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
    finally:
        s.close()
    check(not got.startswith(b"HTTP/"), "plain HTTP answered: %r" % got[:40])
    check(peer_cn(d.port) == "cert-a", "cert A served")

    # Swap in cert B, SIGHUP: same port, new certificate.
    for src, dst in ((cert_b, cert), (key_b, key)):
        with open(src, "rb") as f, open(dst + ".new", "wb") as g:
            g.write(f.read())
        os.rename(dst + ".new", dst)
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: peer_cn(d.port) == "cert-b", 20, "cert B after SIGHUP")
    check(tls_get(d.port, "/topics", cert_b, auth)[0] == 200, "B verifies")
    try:
        tls_get(d.port, "/healthz", cert_a)
        check(False, "cert A still verifies after the swap")
    except urllib.error.URLError as e:
        check(isinstance(e.reason, ssl.SSLCertVerificationError),
              "verification fails against A: %r" % e)
    r = run(["curl", "-sS", "--max-time", "5", "--cacert", cert_b, "-o",
             "/dev/null", "-w", "%{http_code}", url + "/healthz"])
    check(r.stdout == b"200", "curl with B: %r" % r.stdout)

    # A certificate that is not the key's, then a broken one, on SIGHUP:
    # each refused with the reason, B stays.
    with open(cert_a, "rb") as f, open(cert, "wb") as g:
        g.write(f.read())
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: "do not match" in ps.log("nmfd-tls"), 20,
             "the mismatched pair refused in the log")
    check(peer_cn(d.port) == "cert-b", "cert B still served")
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n"
                "-----END CERTIFICATE-----\n")
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: ps.log("nmfd-tls").count("http: reload refused") == 2,
             20, "the broken certificate refused in the log")
    check(peer_cn(d.port) == "cert-b", "cert B still served")
    m = metric_lines(tls_get(d.port, "/metrics", cert_b)[1])
    check(m['nmfd_http_tls_reloads_total{result="ok"}'] == 1, "one ok reload")
    check(m['nmfd_http_tls_reloads_total{result="error"}'] == 2,
          "two failed reloads")
    check(d.poll() is None, "nmfd runs on")
    check(stop(d) == 0, "nmfd exit")
    check(TOKEN not in ps.log("nmfd-tls"), "the token is not logged")
    print("TLS: curl and python3 ssl verify cert A; SIGHUP swaps in cert B "
          "on port %d; a mismatched or broken cert keeps B" % d.port)


def main():
    with Procs() as ps:
        refused_beyond_loopback(ps)
        data_routes(ps)
        basic_auth(ps)
        tls(ps)
    print("http access: OK")


if __name__ == "__main__":
    main()
