#!/usr/bin/env python3
"""Reference Boss for benchmarks: the course's way, in plain Python.

socketserver.ThreadingTCPServer (a thread per connection), pyca
`cryptography` Fernet for tokens, and one sqlite3 commit per message. It
speaks the subset of spyctl's line protocol (PROTOCOL.md) that the benchmarks
use, so the same senders can drive either Boss:

    request:  MSG <agent-id> <fernet-token>\\n
    reply:    ACK <fernet-token>\\n  |  ERR <code> <text>\\n
    token plaintext: {"v":1,"id":...,"kind":"text"|"file",...}\\n<body>

Differences from spyctl's Boss, on purpose: one agent only (the one whose wire
key it is given, e.g. from `spyctl agent key export`), no connection limit,
line deadline or idle timeout, and writes are serialised by one lock with a
commit (and so an fsync) per message, the way a course project would do it.
The lock only spares SQLite's busy-wait sleeps; it does not batch anything.
"""

import argparse
import base64
import hashlib
import json
import os
import socketserver
import sqlite3
import sys
import threading
import time

from cryptography.fernet import Fernet, InvalidToken

MAX_LINE = 1024 * 1024
TTL = 300

SCHEMA = """
CREATE TABLE IF NOT EXISTS Messages (
    AgentId INTEGER NOT NULL,
    MessageId TEXT NOT NULL,
    ReceivedAt INTEGER NOT NULL,
    Token TEXT NOT NULL,
    UNIQUE (AgentId, MessageId)
);
CREATE TABLE IF NOT EXISTS Files (
    AgentId INTEGER NOT NULL,
    FileId TEXT NOT NULL,
    Name TEXT NOT NULL,
    Size INTEGER NOT NULL,
    Sha256 TEXT NOT NULL,
    ReceivedAt INTEGER NOT NULL,
    UNIQUE (AgentId, FileId)
);
"""


def err(code, text):
    return f"ERR {code} {text}\n".encode()


class Boss(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, agent_id, fernet, db_path, files_dir, wal):
        super().__init__(addr, Handler)
        self.agent_id = agent_id
        self.fernet = fernet
        self.db_path = db_path
        self.files_dir = files_dir
        self.write_lock = threading.Lock()
        self.files_lock = threading.Lock()
        with sqlite3.connect(db_path) as conn:
            if wal:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        self.wal = wal


class Handler(socketserver.StreamRequestHandler):
    def setup(self):
        super().setup()
        # One connection per client thread, as course code opens one per handler.
        self.db = sqlite3.connect(self.server.db_path)
        self.db.execute("PRAGMA synchronous=FULL")

    def finish(self):
        self.db.close()
        super().finish()

    def handle(self):
        while True:
            line = self.rfile.readline(MAX_LINE)
            if not line:
                return
            if not line.endswith(b"\n"):
                self.wfile.write(err("too_long", "line too long"))
                return
            self.wfile.write(self.answer(line.rstrip(b"\r\n")))

    def commit(self, sql, params):
        with self.server.write_lock:
            cur = self.db.execute(sql, params)
            self.db.commit()
            return cur.rowcount == 1

    def answer(self, line):
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] != b"MSG" or not parts[1].isdigit():
            return err("bad_request", "expected MSG <agent-id> <token>")
        agent_id, token = int(parts[1]), parts[2]
        if agent_id != self.server.agent_id:
            return err("auth", "authentication failed")
        fernet = self.server.fernet
        try:
            plaintext = fernet.decrypt(token, ttl=TTL)
        except InvalidToken:
            return err("auth", "authentication failed")
        head, _, body = plaintext.partition(b"\n")
        try:
            header = json.loads(head)
            msg_id = header["id"]
        except (ValueError, KeyError, TypeError):
            return err("bad_request", "bad header")
        now = int(time.time())
        if header.get("kind") == "text":
            added = self.commit(
                "INSERT OR IGNORE INTO Messages (AgentId, MessageId, ReceivedAt, Token) VALUES (?, ?, ?, ?)",
                (agent_id, msg_id, now, token.decode()),
            )
            reply = "Message received. Good work."
        elif header.get("kind") == "file":
            added, reply = self.file_chunk(agent_id, header, body, now)
            if added is None:
                return err("bad_request", reply)
        else:
            return err("bad_request", "unknown kind")
        ack = json.dumps({"v": 1, "id": msg_id, "status": "stored" if added else "duplicate"})
        return b"ACK " + fernet.encrypt(ack.encode() + b"\n" + reply.encode()) + b"\n"

    def file_chunk(self, agent_id, header, body, now):
        file_id, offset, size = header["file_id"], header["offset"], header["size"]
        if not file_id.replace("-", "").replace("_", "").isalnum():
            return None, "bad file id"
        partial = os.path.join(self.server.files_dir, f"{agent_id}-{file_id}.partial")
        with self.server.files_lock:
            mode = "r+b" if os.path.exists(partial) else "wb"
            with open(partial, mode) as f:
                f.seek(offset)
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
        if offset + len(body) < size:
            return True, f"{offset + len(body)} of {size} bytes"
        digest = hashlib.sha256()
        with open(partial, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != header.get("sha256"):
            return None, "sha256 mismatch"
        final = os.path.join(self.server.files_dir, f"{agent_id}-{file_id}")
        os.replace(partial, final)
        added = self.commit(
            "INSERT OR IGNORE INTO Files (AgentId, FileId, Name, Size, Sha256, ReceivedAt) VALUES (?, ?, ?, ?, ?, ?)",
            (agent_id, file_id, header["name"], size, header["sha256"], now),
        )
        return added, f"File received: {size} bytes, SHA-256 verified."


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bind", default="127.0.0.1:5001", help="HOST:PORT (port 0 picks one)")
    p.add_argument("--agent-id", type=int, required=True)
    p.add_argument("--key-file", required=True, help="the agent's wire key (URL-safe base64, 32 bytes)")
    p.add_argument("--dir", required=True, help="where ref.db and received files go")
    p.add_argument("--wal", action="store_true", help="WAL journal (one fsync per commit) instead of the default")
    a = p.parse_args()
    with open(a.key_file) as f:
        key = f.read().strip()
    base64.urlsafe_b64decode(key)  # fail early on a bad key file
    os.makedirs(a.dir, exist_ok=True)
    files_dir = os.path.join(a.dir, "files")
    os.makedirs(files_dir, exist_ok=True)
    host, port = a.bind.rsplit(":", 1)
    server = Boss((host, int(port)), a.agent_id, Fernet(key), os.path.join(a.dir, "ref.db"), files_dir, a.wal)
    print(f"Reference Boss listening on {server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
