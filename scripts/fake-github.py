#!/usr/bin/env python3
"""A local stand-in for GitHub's issue-comment API, for the demo: lists, creates and edits comments in
memory (the routes and JSON shapes GitHub documents) and writes every posted or edited body to the
file given as the second argument. Usage: fake-github.py PORT OUT_FILE. Binds 127.0.0.1 only."""
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, OUT = int(sys.argv[1]), sys.argv[2]
comments = {}  # id -> {"id", "body", "issue"}
next_id = [1000]


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self):
        if not self.headers.get("Authorization"):
            self._send(401, {"message": "Requires authentication"})
            return False
        return True

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _record(self, verb, comment):
        with open(OUT, "a") as f:
            f.write(f"=== {verb} comment {comment['id']} on pull request #{comment['issue']}\n{comment['body']}\n")

    def do_GET(self):
        m = re.match(r"^/repos/[^/]+/[^/]+/issues/(\d+)/comments(\?.*)?$", self.path)
        if not m or not self._authorised():
            return self._send(404, {"message": "Not Found"}) if not m else None
        issue = int(m.group(1))
        self._send(200, [c for c in comments.values() if c["issue"] == issue])

    def do_POST(self):
        m = re.match(r"^/repos/[^/]+/[^/]+/issues/(\d+)/comments$", self.path)
        if not m or not self._authorised():
            return self._send(404, {"message": "Not Found"}) if not m else None
        next_id[0] += 1
        comment = {"id": next_id[0], "body": self._body()["body"], "issue": int(m.group(1))}
        comments[comment["id"]] = comment
        self._record("created", comment)
        self._send(201, comment)

    def do_PATCH(self):
        m = re.match(r"^/repos/[^/]+/[^/]+/issues/comments/(\d+)$", self.path)
        if not m or not self._authorised():
            return self._send(404, {"message": "Not Found"}) if not m else None
        comment = comments.get(int(m.group(1)))
        if comment is None:
            return self._send(404, {"message": "Not Found"})
        comment["body"] = self._body()["body"]
        self._record("edited", comment)
        self._send(200, comment)

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-github: " + fmt % args + "\n")


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
