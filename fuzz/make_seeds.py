#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/seeds/<target>/.

The committed corpora (fuzz/corpus/<target>/) started from these seeds and grew by fuzzing, then
`cargo fuzz cmin` kept what adds coverage. Rerun this (it needs Python's `cryptography` for the
ES256/EdDSA/RS256 seed tokens, signed with the test keys of tests/keys/) and merge the result
into a corpus with `cargo +nightly fuzz cmin <target> fuzz/seeds/<target>` if a format changes.

Input formats are documented on each target in src/fuzz_targets.rs.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")

NOW = 1_800_000_000
# Must match src/fuzz_targets.rs.
HMAC_MAIN = b"fuzz-only HMAC secret for provider main, 64 bytes long: 01234567"
HMAC_COOKIE = b"fuzz-only secret of provider cookie, 48 bytes..."
MAIN_ISS = "https://issuer.test"
COOKIE_ISS = "https://cookie.test"


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------------------------
# config_load
# --------------------------------------------------------------------------------------------


def config_seeds():
    readme = open(os.path.join(ROOT, "README.md")).read()
    fragments = re.findall(r"```json\n(.*?)```", readme, re.S)
    merged = {}
    n = 0
    for frag in fragments:
        text = frag.strip()
        for candidate in (text, "{" + text + "}"):
            try:
                value = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(value, dict):
                n += 1
                write("config_load", "readme-%02d.json" % n, candidate)
                for k, v in value.items():
                    if k not in ("error", "type"):
                        merged.setdefault(k, v)
            break
    if "routes" in merged:
        write("config_load", "readme-merged.json", json.dumps(merged, indent=2))
    demo = open(os.path.join(ROOT, "envoy", "demo.yaml")).read()
    m = re.search(r"value: \|\n((?:\s{20}.*\n)+)", demo)
    if m:
        write("config_load", "demo.json", m.group(1))
    fz = open(os.path.join(ROOT, "src", "fuzz_targets.rs")).read()
    m = re.search(r'pub const ROUTE_CONFIG: &str = r#"(.*?)"#;', fz, re.S)
    if m:
        write("config_load", "route-config.json", m.group(1))
    cfg = open(os.path.join(ROOT, "src", "config.rs")).read()
    for i, m in enumerate(re.finditer(r'r#"(\{.*?\})"#', cfg, re.S)):
        write("config_load", "config-rs-%02d.json" % i, m.group(1))
    base = {"routes": [{"name": "a", "match": {"path_prefix": "/"}, "auth": "none"}]}
    attacks = {
        "alg-none.json": {
            "jwt": {"providers": [{"name": "p", "issuer": "i", "audiences": ["a"],
                                   "algorithms": ["none"],
                                   "jwks": {"inline": {"keys": [{"kty": "oct", "k": b64u(HMAC_MAIN)}]}}}]},
            "routes": [{"name": "a", "match": {"path_prefix": "/"}, "auth": "jwt"}]},
        "private-jwk.json": {
            "jwt": {"providers": [{"name": "p", "issuer": "i", "audiences": ["a"],
                                   "jwks": {"inline": {"keys": [json.load(open(os.path.join(ROOT, "tests/keys/p256.json")))]}}}]},
            "routes": [{"name": "a", "match": {"path_prefix": "/"}, "auth": "jwt"}]},
        "unnormalised-route.json": {"routes": [{"name": "a", "match": {"path_prefix": "/a/../b/"}, "auth": "none"}]},
        "semicolon-route.json": {"routes": [{"name": "a", "match": {"path_exact": "/a;b"}, "auth": "none"}]},
        "template.json": {"routes": [{"name": "a", "match": {"path_template": "/u/{id}/{id}"}, "auth": "none"}]},
        "webhook-secret-type.json": dict(base, webhooks={"h": {"scheme": "stripe", "secrets": "whsec_notAnArrayButASecret0123"}}),
        "webhook-short.json": dict(base, webhooks={"h": {"scheme": "github", "secrets": ["short"]}}),
        "firewall-strip.json": dict(base, firewall={"path_parameters": "strip", "ambiguous_case": "allow",
                                                     "override_headers": "reject"}),
        "schema.json": {"routes": [{"name": "a", "match": {"path_prefix": "/"}, "auth": "none",
                                     "body_schema": {"type": "object", "properties": {"n": {"pattern": "^(a+)+$"}}}}]},
    }
    for name, value in attacks.items():
        write("config_load", name, json.dumps(value))
    write("config_load", "trailing.json", json.dumps(base) + " {}")
    write("config_load", "duplicate-key.json", '{"routes":[],"routes":' + json.dumps(base["routes"]) + "}")
    write("config_load", "empty.json", " \n")


# --------------------------------------------------------------------------------------------
# jwt_verify
# --------------------------------------------------------------------------------------------


def private_key(name):
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    jwk = json.load(open(os.path.join(ROOT, "tests", "keys", name + ".json")))
    num = lambda k: int.from_bytes(unb64u(jwk[k]), "big")
    if jwk["kty"] == "EC":
        pub = ec.EllipticCurvePublicNumbers(num("x"), num("y"), ec.SECP256R1())
        return ec.EllipticCurvePrivateNumbers(num("d"), pub).private_key()
    if jwk["kty"] == "OKP":
        return ed25519.Ed25519PrivateKey.from_private_bytes(unb64u(jwk["d"]))
    pub = rsa.RSAPublicNumbers(num("e"), num("n"))
    return rsa.RSAPrivateNumbers(num("p"), num("q"), num("d"), num("dp"), num("dq"), num("qi"), pub).private_key()


def sign(alg, header, claims, key=None):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    h = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    c = claims if isinstance(claims, str) else json.dumps(claims, separators=(",", ":"))
    inp = (b64u(h.encode()) + "." + b64u(c.encode())).encode()
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        sig = hmac.new(key or HMAC_MAIN, inp, digest).digest()
    elif alg == "ES256":
        der = (key or private_key("p256")).sign(inp, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "EdDSA":
        sig = private_key("ed25519").sign(inp)
    elif alg == "RS256":
        sig = private_key("rsa2048").sign(inp, padding.PKCS1v15(), hashes.SHA256())
    else:
        sig = b""
    return inp.decode() + "." + b64u(sig)


def jwt_seeds():
    good = {"iss": MAIN_ISS, "aud": "api", "sub": "alice", "iat": NOW - 10, "exp": NOW + 600,
            "roles": ["viewer", "editor"]}
    kids = {"HS256": "fuzz-hmac", "HS512": "fuzz-hmac", "ES256": "test-p256", "EdDSA": "test-ed25519",
            "RS256": "test-rsa"}
    tokens = {}
    for alg, kid in kids.items():
        tokens["good-" + alg] = sign(alg, {"alg": alg, "typ": "JWT", "kid": kid}, good)
        tokens["nokid-" + alg] = sign(alg, {"alg": alg}, good)
    g = dict(good)
    tokens["expired"] = sign("ES256", {"alg": "ES256", "kid": "test-p256"}, dict(g, exp=NOW - 61))
    tokens["skew-edge"] = sign("HS256", {"alg": "HS256"}, dict(g, exp=NOW - 59))
    tokens["nbf-future"] = sign("HS256", {"alg": "HS256"}, dict(g, nbf=NOW + 61))
    tokens["iat-future"] = sign("HS256", {"alg": "HS256"}, dict(g, iat=NOW + 61))
    tokens["too-long"] = sign("HS256", {"alg": "HS256"}, dict(g, iat=NOW - 10, exp=NOW + 86400))
    tokens["aud-array"] = sign("HS256", {"alg": "HS256"}, dict(g, aud=["x", "https://api.test"]))
    tokens["aud-mixed"] = sign("HS256", {"alg": "HS256"}, dict(g, aud=["api", 1]))
    tokens["wrong-aud"] = sign("HS256", {"alg": "HS256"}, dict(g, aud="web"))
    tokens["wrong-iss"] = sign("HS256", {"alg": "HS256"}, dict(g, iss="https://evil.test"))
    tokens["exp-float"] = sign("HS256", {"alg": "HS256"}, json.dumps(g).replace(str(NOW + 600), "1800000600.5"))
    tokens["exp-huge"] = sign("HS256", {"alg": "HS256"}, dict(g, exp=2 ** 63))
    tokens["sub-number"] = sign("HS256", {"alg": "HS256"}, dict(g, sub=7))
    tokens["claims-dup"] = sign("HS256", {"alg": "HS256"}, json.dumps(g)[:-1] + ',"iss":"https://evil.test"}')
    tokens["header-dup"] = sign("HS256", '{"alg":"HS256","alg":"none"}', g)
    tokens["crit"] = sign("HS256", {"alg": "HS256", "crit": ["exp"]}, g)
    tokens["jku"] = sign("HS256", {"alg": "HS256", "jku": "https://evil.test/jwks"}, g)
    tokens["cty-jwt"] = sign("HS256", {"alg": "HS256", "cty": "JWT"}, g)
    tokens["kid-long"] = sign("HS256", {"alg": "HS256", "kid": "k" * 300}, g)
    tokens["kid-other"] = sign("ES256", {"alg": "ES256", "kid": "test-p256-other"}, g)
    tokens["claim-crlf"] = sign("HS256", {"alg": "HS256"}, dict(g, sub="alice\r\nx-admin: 1"))
    tokens["none"] = b64u(b'{"alg":"none"}') + "." + b64u(json.dumps(g).encode()) + "."
    tokens["None"] = b64u(b'{"alg":"None"}') + "." + b64u(json.dumps(g).encode()) + "."
    rsa_pub = open(os.path.join(ROOT, "tests", "keys", "rsa2048.json")).read().encode()
    tokens["alg-confusion"] = sign("HS256", {"alg": "HS256", "kid": "test-rsa"}, g, key=rsa_pub)
    es = tokens["good-ES256"]
    head, payload, sig = es.split(".")
    raw = bytearray(unb64u(sig))
    tokens["es-zero"] = head + "." + payload + "." + b64u(bytes(64))
    tokens["es-high-s"] = head + "." + payload + "." + b64u(bytes(raw[:32]) + (0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551 - int.from_bytes(raw[32:], "big")).to_bytes(32, "big"))
    tokens["padded"] = es + "=="
    last = es[-1]
    tokens["trailing-bits"] = es[:-1] + ("A" if last != "A" else "B")
    tokens["four-parts"] = es + ".x"
    tokens["std-b64"] = es.replace("-", "+").replace("_", "/")
    for name, tok in tokens.items():
        write("jwt_verify", "bearer-" + name, "0" + tok)
    # Self-signed (mode 1): choice byte, header JSON, NUL, claims JSON.
    cookie_claims = {"iss": COOKIE_ISS, "aud": "web", "sub": "bob"}
    selfs = {
        "main-hs256": (0, {"alg": "HS256", "kid": "fuzz-hmac"}, good),
        "main-hs512": (1, {"alg": "HS512"}, good),
        "cookie-hs384": (2 + 4, {"alg": "HS384", "kid": "cookie-hmac"}, cookie_claims),
        "cookie-xtoken": (2 + 8, {"alg": "HS384"}, dict(cookie_claims, nbf=NOW)),
        "cookie-in-bearer": (2, {"alg": "HS384"}, cookie_claims),
        "lie-rs256": (0, {"alg": "RS256", "kid": "test-rsa"}, good),
        "lie-es256": (0, {"alg": "ES256"}, good),
        "hs384-main": (3, {"alg": "HS384"}, good),
        "no-exp": (0, {"alg": "HS256"}, {k: v for k, v in good.items() if k != "exp"}),
        "roles-object": (0, {"alg": "HS256"}, dict(good, roles={"a": [1, None, "x,y%"]})),
    }
    for name, (choice, header, claims) in selfs.items():
        data = b"1" + bytes([choice]) + json.dumps(header).encode() + b"\0" + json.dumps(claims).encode()
        write("jwt_verify", "self-" + name, data)
    cookie_es = sign("ES256", {"alg": "ES256", "kid": "test-p256"}, dict(cookie_claims, exp=NOW + 5))
    write("jwt_verify", "cookie-es256", "3" + cookie_es)
    write("jwt_verify", "cookie-main-token", "3" + tokens["good-HS256"])
    good_hs = tokens["good-HS256"]
    heads = {
        "two-bearers": "authorization: Bearer %s\nauthorization: Bearer %s\n" % (good_hs, good_hs),
        "bearer-lower": "authorization: bearer %s\n" % good_hs,
        "bearer-spaces": "authorization: Bearer    %s   \n" % good_hs,
        "cookie-and-header": "cookie: a=1; session=%s; b=2\nx-token: %s\n" % (cookie_es, cookie_es),
        "two-cookies": "cookie: session=%s\ncookie: session=%s\n" % (cookie_es, cookie_es),
        "empty-bearer": "authorization: Bearer \n",
        "xtoken": "x-token: %s\n" % cookie_es,
    }
    for name, text in heads.items():
        write("jwt_verify", "head-" + name, "2" + text)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

PATHS = [
    "/", "/healthz", "/healthz/", "/healthz?x=1", "/public/a.css", "/public/", "/docs", "/docs/x",
    "/docsx", "/users/bob/profile", "/users/bob/profile/", "/users/bob/documents", "/Static/a.js",
    "/static/a.js", "/STATIC/a.js", "/admin/x", "/ADMIN/x", "/Admin/x", "/api", "/API", "/api/v1",
    "/apix", "/Reports", "/reports", "/REPORTS/",
    # path parameters and dot segments (Tomcat, Spring)
    "/admin;x=1/x", "/public;x/../admin/x", "/public/..;/admin/x", "/..;/admin/x", "/;/admin/x",
    "/public/x;jsessionid=1", "/healthz;", "/users/bob;v=1/profile", "/docs;/../admin/",
    "/public/%2e%2e/admin/x", "/public/%2E%2E/admin/x", "/public/.%2e/admin/x", "/a/%2e%2e/b",
    "/public/%252e%252e/admin/x", "/public/..%2fadmin/x", "/public/..%2Fadmin", "/public/..%5cadmin",
    "/public/..\\admin", "/public/../admin/x", "/public/./../admin/x", "/./admin/x", "//admin/x",
    "/public//..//admin/x", "/..", "/../", "/public/..", "/public/../", "/%2e/admin/x",
    # trailing dots and spaces (IIS)
    "/admin./x", "/admin%2e/x", "/admin%2E/x", "/admin../x", "/admin.../x", "/admin%20/x",
    "/admin /x", "/public/x.", "/healthz.", "/docs%2e",
    # encodings
    "/%61dmin/x", "/%41dmin/x", "/adm%69n/x", "/admin%00/x", "/admin%0a/x", "/admin%7f/x",
    "/admin%C0%AE/x", "/admin%c0%af/x", "/%C2%85admin", "/a%E2%80%A8b", "/caf%C3%A9", "/caf\u00e9",
    "/public/%F0%9F%98%80", "/public/%ff", "/public/%", "/public/%4", "/public/%zz", "/a%3Bb/x",
    "/a%3bb", "/a%3Fb", "/a%23b", "/a%25", "/public/a+b", "/public/a%2Bb", "/public/%7e", "/public/~",
    "/public/<x>", "/public/\"x\"", "/public/{x}", "/public/[x]", "/public/|", "/public/^",
    "/public/%5B", "/public/x#frag", "/public/x?y#z",
    # queries
    "/public/x?_method=DELETE", "/public?api_key=1", "/public/x?a=%2F..;&b", "/public/x?",
    "/public/x??", "/healthz?x=/../admin", "/public/x?q=\u00e9",
    # not origin form
    "*", "http://api.test/admin/x", "admin/x", "", "\\admin",
]


def path_seeds():
    for i, p in enumerate(PATHS):
        write("path_differential", "path-%03d" % i, p)
        for m in "0", "2":
            write("route_match", "m%s-path-%03d" % (m, i), m + p)
    write("route_match", "m4-options", "4/public/x")
    write("route_match", "m5-lower-get", "5/healthz")
    write("route_match", "m1-head-profile", "1/users/bob/profile")


# --------------------------------------------------------------------------------------------
# api_key_header
# --------------------------------------------------------------------------------------------

API_KEYS = {
    "billing": "ag_live_3q2-7wEbTRxw4m9Zt2kQbP1JdXcVfy8sN6uHoLa0GiE",
    "legacy": "ag_live_legacyKeyUnderTheShorterPrefix0123456789ab",
    "ci": "ag_test_Zz9yXw8VuT7sRq6PoN5mLk4JiH3gFe2DcB1a0_-xyz",
    "old": "ag_test_expiredExpiredExpiredExpiredExpiredExp",
}


def api_key_seeds():
    b, l, c, o = (API_KEYS[k] for k in ("billing", "legacy", "ci", "old"))
    seeds = {
        "header": "x-api-key: %s\n" % b,
        "header-legacy": "x-api-key: %s\n" % l,
        "header-ci": "x-api-key: %s\n" % c,
        "expired": "x-api-key: %s\n" % o,
        "authorization": "authorization: ApiKey %s\n" % b,
        "authorization-lower": "authorization: apikey %s\n" % c,
        "authorization-spaces": "authorization: ApiKey   %s  \n" % b,
        "both": "x-api-key: %s\nauthorization: ApiKey %s\n" % (b, b),
        "repeated": "x-api-key: %s\nx-api-key: %s\n" % (b, b),
        "two-authorizations": "authorization: Bearer x\nauthorization: ApiKey %s\n" % b,
        "bearer-and-key": "authorization: Bearer x\nx-api-key: %s\n" % b,
        "wrong": "x-api-key: ag_live_0000000000000000000000000000000000000000000\n",
        "prefix-only": "x-api-key: ag_live_\n",
        "unknown-prefix": "x-api-key: sk_live_abc\n",
        "control": "x-api-key: ag_live_a\tb\n",
        "long": "x-api-key: ag_live_" + "a" * 300 + "\n",
        "underscore-twin": "x_api_key: %s\n" % b,
        "query": "?api_key=%s\n" % b,
        "query-encoded": "?%%61pi_key=1&x=2\n",
        "query-array": "?api_key[]=1;token=2\n",
        "query-plus": "?access+token=1&Token=2&x-api-key=3\n",
        "dates": "2027-06-30T00:00:00Z\n2027-06-30T02:00:00+02:00\n1970-01-01T00:00:00Z\n"
                 "2024-02-29T23:59:60.999z\n2023-02-29T00:00:00Z\n1969-12-31T23:59:59Z\n"
                 "1970-01-01T00:00:00+00:01\n9999-12-31T23:59:59-23:59\n2027-06-30 00:00:00Z\n",
    }
    for name, text in seeds.items():
        write("api_key_header", name, text)


# --------------------------------------------------------------------------------------------
# webhook_signature
# --------------------------------------------------------------------------------------------


def webhook_seeds():
    body = '{"id":"evt_1","type":"payment_intent.succeeded","data":{"amount":2000}}'
    seeds = {
        "stripe": "0stripe-signature: t={now},v1={sig}\n\n" + body,
        "stripe-rotation": "0stripe-signature: t={now},v1=" + "0" * 64 + ",v1={sig2},v0=abc\n\n" + body,
        "stripe-stale": "0stripe-signature: t={old},v1={sig}\n\n" + body,
        "stripe-two-t": "0stripe-signature: t={now},t={now},v1={sig}\n\n" + body,
        "stripe-spaces": "0stripe-signature:  t={now} , v1={sig} \n\n" + body,
        "stripe-upper": "0stripe-signature: t={now},v1={sig}\nstripe-signature: t={now},v1={sig}\n\n" + body,
        "stripe-empty-body": "0stripe-signature: t={now},v1={sig}\n\n",
        "github": "1x-hub-signature-256: sha256={sig}\n\n" + body,
        "github-rotation": "1x-hub-signature-256: sha256={sig2}\n\n" + body,
        "github-sha1": "1x-hub-signature: sha1=0123\n\n" + body,
        "github-prefix-case": "1x-hub-signature-256: SHA256={sig}\n\n" + body,
        "standard": "2webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek\nwebhook-timestamp: {now}\n"
                    "webhook-signature: v1,{sig}\n\n" + body,
        "standard-rotation": "2webhook-id: msg_1\nwebhook-timestamp: {now}\n"
                             "webhook-signature: v1a,xyz v1,{sig2}  v1,{sig}\n\n" + body,
        "standard-stale": "2webhook-id: msg_1\nwebhook-timestamp: {old}\nwebhook-signature: v1,{sig}\n\n" + body,
        "standard-leading-zero": "2webhook-id: msg_1\nwebhook-timestamp: 0{now}\nwebhook-signature: v1,{sig}\n\n" + body,
        "standard-missing-id": "2webhook-timestamp: {now}\nwebhook-signature: v1,{sig}\n\n" + body,
    }
    for name, text in seeds.items():
        write("webhook_signature", name, text)


# --------------------------------------------------------------------------------------------
# body_schema
# --------------------------------------------------------------------------------------------


def body_seeds():
    bodies = [
        (0, {"name": "Ada", "email": "ada@example.com", "age": 36, "role": "admin", "tags": ["a", "b"]}),
        (0, {"name": "Ada", "email": "not-an-email", "age": 36.5, "extra": 1, "role": "root"}),
        (0, {"name": "", "email": "a@[127.0.0.1]", "tags": ["a b", "\u00a0x", "y"] * 3}),
        (0, '{"name":"Ada","name":"Eve","email":"a@b.c"}'),
        (0, "[]"), (0, "not json"), (0, '{"name":"Ada","email":"a@b.c","age":1e2}'),
        (1, {"a": {"b": True, "c": None, "d": 1}}), (1, [1, 2.5, -1.5, 1001, "x"]),
        (2, [{"id": "abc"}, {"id": "ab"}, {}]), (2, []), (3, {"anything": [1, {"x": None}]}),
    ]
    for i, (pick, body) in enumerate(bodies):
        text = body if isinstance(body, str) else json.dumps(body)
        write("body_schema", "fixed-%02d" % i, bytes([pick + ord("0")]) + text.encode())
    suite = os.path.join(ROOT, "tests", "data", "json-schema-suite")
    n = 0
    for name in sorted(os.listdir(suite)):
        if not name.endswith(".json"):
            continue
        try:
            groups = json.load(open(os.path.join(suite, name)))
        except ValueError:
            continue
        for group in groups:
            for case in group.get("tests", [])[:2]:
                n += 1
                data = json.dumps(group["schema"]).encode() + b"\0" + json.dumps(case["data"]).encode()
                write("body_schema", "suite-%03d" % n, data)


# --------------------------------------------------------------------------------------------
# header_pairs
# --------------------------------------------------------------------------------------------


def serialize(pairs):
    out = len(pairs).to_bytes(4, "little")
    for n, v in pairs:
        out += len(n).to_bytes(4, "little") + len(v).to_bytes(4, "little")
    for n, v in pairs:
        out += n + b"\0" + v + b"\0"
    return out


def header_pair_seeds():
    seeds = {
        "request": [(b":method", b"GET"), (b":path", b"/a?b"), (b":authority", b"api.test"),
                    (b"x-request-id", b"r1"), (b"cookie", b"a=1; b=2")],
        "latin1": [(b":status", b"200"), (b"x-latin-1", b"caf\xe9")],
        "bad-pseudo": [(b":path", b"/caf\xe9"), (b"x", b"")],
        "empty": [],
        "dups": [(b"x-dup", b"1"), (b"x-dup", b"2"), (b"", b"")],
    }
    for name, pairs in seeds.items():
        write("header_pairs", name, serialize(pairs))
    write("header_pairs", "trailing", serialize([(b"a", b"b")]) + b"junk")
    write("header_pairs", "lines", b":method:GET\n:path:/x\nx-a:1\nbad\xff:\xfe\n")


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    config_seeds()
    jwt_seeds()
    path_seeds()
    api_key_seeds()
    webhook_seeds()
    body_seeds()
    header_pair_seeds()
    for target in sorted(os.listdir(OUT)):
        print(target, len(os.listdir(os.path.join(OUT, target))))
