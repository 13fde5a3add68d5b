"""One HTTPS request to Envoy's TLS filter chain, for the Rust tests (tests/common/http.rs).

Reads {"port", "method", "path", "headers": [[name, value], ...], "authority"} as JSON on stdin
and prints {"status", "headers": [[name, value], ...], "body_b64"}. The certificate is the test
process's own self-signed one, so it is not verified: the test is about what the filter decides
on a TLS connection, not about the certificate.
"""

import base64
import http.client
import json
import ssl
import sys


def main():
    spec = json.load(sys.stdin)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", spec["port"], timeout=10, context=context)
    connection.putrequest(spec["method"], spec["path"], skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", spec.get("authority") or "api.test")
    for name, value in spec["headers"]:
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    print(json.dumps({
        "status": response.status,
        "headers": [[k.lower(), v] for k, v in response.getheaders()],
        "body_b64": base64.b64encode(body).decode(),
    }))


if __name__ == "__main__":
    main()
