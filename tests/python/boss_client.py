#!/usr/bin/env python3
"""A third-party client for the Boss, written from PROTOCOL.md only.

    boss_client.py ADDR AGENT_ID KEYFILE TEXT

Sends TEXT as one text message from agent AGENT_ID, whose wire key is in KEYFILE
(Fernet's text form, as written by `spyctl agent key export`), to the Boss at
ADDR (HOST:PORT). It checks the acknowledgement as PROTOCOL.md asks (sealed under
the same key, at most 300 s old, echoing our message id) and prints two lines:
the status (`stored` or `duplicate`) and the Boss's reply text.

Exit codes: 0 acknowledged; 1 refused with `ERR <code>` (printed on stderr);
2 usage; 3 the answer breaks the protocol; 4 no answer after every attempt.

Only the standard library and `cryptography.fernet`: a socket, a JSON parser
and a Fernet implementation, as PROTOCOL.md promises is enough.
"""

import json
import re
import secrets
import socket
import sys
import time

from cryptography.fernet import Fernet, InvalidToken

MAX_LINE = 1024 * 1024  # bytes, newline included ("Transport")
ACK_TTL = 300  # seconds; an older ACK proves nothing ("Requests and replies")
ATTEMPTS = 5  # "Freshness, retries and replays"
FIRST_BACKOFF = 0.1
TIMEOUT = 10.0
ERROR_CODES = {"bad_request", "too_long", "auth", "expired", "busy", "forbidden", "internal"}
RETRYABLE = {"busy", "internal"}
AGENT_ID = re.compile(r"[1-9][0-9]*\Z")


class Refused(Exception):
    def __init__(self, code, text):
        super().__init__(f"ERR {code} {text}")
        self.code = code


class ProtocolViolation(Exception):
    pass


class NoAnswer(Exception):
    pass


def parse_addr(addr):
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"ADDR must be HOST:PORT, not {addr!r}")
    return host.strip("[]"), int(port)


def read_key(path):
    with open(path, "rb") as f:
        text = f.read().strip()
    return Fernet(text)  # raises ValueError on anything but 32 url-safe base64 bytes


def read_line(sock):
    """One reply line without its ending, bounded by MAX_LINE."""
    buf = bytearray()
    while True:
        newline = buf.find(b"\n")
        if newline >= 0:
            if newline + 1 > MAX_LINE:
                raise ProtocolViolation("reply line longer than 1 MiB")
            return bytes(buf[:newline]).removesuffix(b"\r")
        if len(buf) >= MAX_LINE:
            raise ProtocolViolation("reply line longer than 1 MiB")
        data = sock.recv(min(65536, MAX_LINE - len(buf)))
        if not data:
            raise NoAnswer("the Boss closed the connection without an answer")
        buf += data


def attempt(host, port, agent_id, fernet, message_id, plaintext):
    # Sealed per attempt, so a retry stays inside the Boss's freshness window.
    token = fernet.encrypt(plaintext)
    line = b"MSG %d %s\n" % (agent_id, token)
    if len(line) > MAX_LINE:
        raise ValueError("the message is too long for one line")
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(line)
            reply = read_line(sock)
    except (OSError, socket.timeout) as e:
        raise NoAnswer(str(e)) from e

    if any(b < 0x20 or b > 0x7E for b in reply):
        raise ProtocolViolation("reply is not printable ASCII")
    verb, _, rest = reply.partition(b" ")
    if verb == b"ERR":
        code, _, text = rest.decode("ascii").partition(" ")
        if code not in ERROR_CODES:
            raise ProtocolViolation(f"unknown error code {code!r}")
        raise Refused(code, text)
    if verb != b"ACK" or not rest or b" " in rest:
        raise ProtocolViolation(f"expected ACK or ERR, got {reply[:80]!r}")
    try:
        opened = fernet.decrypt(rest, ttl=ACK_TTL)
    except InvalidToken as e:
        raise ProtocolViolation("the ACK is not sealed under this agent's key, or is stale") from e
    head, sep, body = opened.partition(b"\n")
    if not sep:
        raise ProtocolViolation("the ACK plaintext has no header line")
    try:
        header = json.loads(head)
    except ValueError as e:
        raise ProtocolViolation(f"the ACK header is not JSON: {e}") from e
    if not isinstance(header, dict) or header.get("v") != 1:
        raise ProtocolViolation(f"unexpected ACK header {header!r}")
    if header.get("id") != message_id:
        raise ProtocolViolation(f"the ACK names message {header.get('id')!r}, not {message_id!r}")
    status = header.get("status")
    if status not in ("stored", "duplicate"):
        raise ProtocolViolation(f"unknown ACK status {status!r}")
    try:
        return status, body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolViolation("the Boss's reply text is not UTF-8") from e


def send_text(addr, agent_id, fernet, text):
    host, port = parse_addr(addr)
    message_id = secrets.token_hex(16)  # 32 hex digits, as spyctl does
    header = json.dumps({"v": 1, "id": message_id, "kind": "text"}, separators=(",", ":"))
    plaintext = header.encode("ascii") + b"\n" + text.encode("utf-8")
    backoff = FIRST_BACKOFF
    last = None
    for n in range(1, ATTEMPTS + 1):
        if n > 1:
            time.sleep(backoff)
            backoff *= 2
        try:
            return attempt(host, port, agent_id, fernet, message_id, plaintext)
        except NoAnswer as e:
            last = e
        except Refused as e:
            if e.code not in RETRYABLE:
                raise
            last = e
    raise NoAnswer(f"no answer from {addr} after {ATTEMPTS} attempts: {last}")


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    _, addr, agent_text, key_path, text = argv
    if not AGENT_ID.match(agent_text):
        print("AGENT_ID must be a positive decimal integer", file=sys.stderr)
        return 2
    try:
        fernet = read_key(key_path)
        status, reply = send_text(addr, int(agent_text), fernet, text)
    except (OSError, ValueError) as e:
        print(f"boss_client: {e}", file=sys.stderr)
        return 2
    except Refused as e:
        print(f"boss_client: refused: {e}", file=sys.stderr)
        return 1
    except ProtocolViolation as e:
        print(f"boss_client: bad answer: {e}", file=sys.stderr)
        return 3
    except NoAnswer as e:
        print(f"boss_client: {e}", file=sys.stderr)
        return 4
    sys.stdout.buffer.write(status.encode("ascii") + b"\n" + reply.encode("utf-8") + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
