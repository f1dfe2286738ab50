#!/usr/bin/env python3
"""A minimal OTLP/HTTP traces receiver for load tests: accepts every POST
(answering an empty ExportTraceServiceResponse, which is zero bytes of
protobuf), decodes nothing, and counts the exports and their bytes; on
SIGTERM writes {"exports": N, "bytes": M} to the file given.

    python3 loadtest/otlp_sink.py 127.0.0.1:4318 sink.json
"""
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"exports": 0, "bytes": 0}
lock = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with lock:
            counts["exports"] += 1
            counts["bytes"] += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    out = sys.argv[2]
    server = ThreadingHTTPServer((host, int(port)), Sink)

    def stop(*_):
        with lock:
            with open(out, "w") as f:
                json.dump(counts, f)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
