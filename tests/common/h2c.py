"""HTTP/2 cleartext (prior knowledge) client for the integration tests: one request, whose body
may come in several DATA frames and end with trailers, which curl cannot send.

Reads a JSON request from stdin:
  {"port": 10000, "method": "POST", "path": "/x", "headers": [["name", "value"], ...],
   "chunks_b64": ["...", ...], "pause_ms": 0, "trailers": [["name", "value"], ...] or null}
and prints one JSON line: {"status": 200, "headers": [[n, v], ...], "body_b64": "..."} or
{"reset": <error code>} when the stream was reset, or {"error": "..."}.
Needs the PyPI package h2 (pure Python).
"""

import base64
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events


def main():
    request = json.load(sys.stdin)
    sock = socket.create_connection(("127.0.0.1", request["port"]), timeout=20)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    stream_id = conn.get_next_available_stream_id()
    chunks = [base64.b64decode(c) for c in request.get("chunks_b64", [])]
    trailers = request.get("trailers")
    headers = [
        (":method", request.get("method", "POST")),
        (":path", request["path"]),
        (":scheme", "http"),
        (":authority", "127.0.0.1:%d" % request["port"]),
    ] + [tuple(h) for h in request.get("headers", [])]
    conn.send_headers(stream_id, headers, end_stream=not chunks and not trailers)
    sock.sendall(conn.data_to_send())

    status, response_headers, body, reset = None, [], b"", None
    done = False

    def pump(block):
        nonlocal status, response_headers, body, reset, done
        sock.settimeout(20 if block else 0.0)
        try:
            data = sock.recv(65536)
        except (BlockingIOError, socket.timeout):
            if block:
                raise
            return
        if not data:
            done = True
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                for name, value in event.headers:
                    name, value = name.decode(), value.decode()
                    if name == ":status":
                        status = int(value)
                    else:
                        response_headers.append([name, value])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                done = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                reset = int(event.error_code)
                done = True
        out = conn.data_to_send()
        if out:
            sock.sendall(out)

    pause = request.get("pause_ms", 0) / 1000.0
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1 and not trailers
        offset = 0
        while offset < len(chunk) or (offset == 0 and not chunk):
            if done:
                break
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0 and chunk:
                pump(True)
                continue
            piece = chunk[offset : offset + window]
            offset += len(piece)
            try:
                conn.send_data(stream_id, piece, end_stream=last and offset >= len(chunk))
            except Exception:  # the stream was closed by the server
                done = True
                break
            sock.sendall(conn.data_to_send())
            pump(False)
            if not chunk:
                break
        if done:
            break
        if pause:
            time.sleep(pause)
            pump(False)
    if trailers and not done:
        conn.send_headers(stream_id, [tuple(t) for t in trailers], end_stream=True)
        sock.sendall(conn.data_to_send())
    while not done:
        pump(True)
    if status is None:
        print(json.dumps({"reset": reset}))
    else:
        print(json.dumps({"status": status, "headers": response_headers,
                          "body_b64": base64.b64encode(body).decode(), "reset": reset}))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # reported to the test, which decides
        print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}))
