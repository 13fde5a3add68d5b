"""DPoP keys and proofs minted by PyPI jwcrypto, for tests/envoy_dpop.rs: an implementation of
RFC 7515 (JWS) and RFC 7638 (thumbprints) that is not the filter's.

Reads one JSON request on stdin, prints one JSON result:
  {"op": "keygen", "kty": "EC" | "RSA" | "OKP" | "oct"}
      -> {"private": jwk, "public": jwk, "thumbprint": RFC 7638 SHA-256 thumbprint}
  {"op": "proofs", "proofs": [{"key": private jwk, "alg": "ES256", "claims": {...},
                               "header": {member: value or null to remove},
                               "header_jwk": jwk (default: the public half of "key")}]}
      -> {"proofs": [compact JWS, ...]}
  {"op": "ath", "token": "..."} -> {"ath": base64url(SHA-256(token))}
The protected header starts as {"typ": "dpop+jwt", "alg", "jwk"}; "header" changes it, so a
test can write the headers a forger would.
"""

import base64
import hashlib
import json
import sys

from jwcrypto import jwk, jws
from jwcrypto.common import json_encode


def keygen(kty):
    if kty == "EC":
        key = jwk.JWK.generate(kty="EC", crv="P-256")
    elif kty == "RSA":
        key = jwk.JWK.generate(kty="RSA", size=2048)
    elif kty == "OKP":
        key = jwk.JWK.generate(kty="OKP", crv="Ed25519")
    elif kty == "oct":
        key = jwk.JWK.generate(kty="oct", size=256)
    else:
        raise ValueError(kty)
    public = key.export_public(as_dict=True) if kty != "oct" else key.export(as_dict=True)
    return {
        "private": key.export(as_dict=True),
        "public": public,
        "thumbprint": key.thumbprint(),
    }


def proof(spec):
    key = jwk.JWK(**spec["key"])
    if "header_jwk" in spec:
        header_jwk = spec["header_jwk"]
    else:
        header_jwk = key.export_public(as_dict=True)
    protected = {"typ": "dpop+jwt", "alg": spec["alg"], "jwk": header_jwk}
    for name, value in spec.get("header", {}).items():
        if value is None:
            protected.pop(name, None)
        else:
            protected[name] = value
    token = jws.JWS(json_encode(spec["claims"]))
    token.add_signature(key, alg=spec["alg"], protected=json_encode(protected))
    return token.serialize(compact=True)


def main():
    request = json.load(sys.stdin)
    op = request["op"]
    if op == "keygen":
        result = keygen(request["kty"])
    elif op == "proofs":
        result = {"proofs": [proof(spec) for spec in request["proofs"]]}
    elif op == "ath":
        digest = hashlib.sha256(request["token"].encode("ascii")).digest()
        result = {"ath": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()}
    else:
        raise ValueError(op)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
