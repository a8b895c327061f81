#!/usr/bin/env python3
"""A third-party client that resumes a file upload, written from PROTOCOL.md only
("Files", "Resuming a file").

    resume_client.py ADDR AGENT_ID KEYFILE PATH FILE_ID [STOP_AFTER]

Asks the Boss at ADDR how much of upload FILE_ID it holds for agent AGENT_ID
(an offset query, sealed under the wire key in KEYFILE), then sends PATH from
there in chunks of 512 KiB, the last carrying the file's SHA-256. With
STOP_AFTER it stops after that many chunks, as a cut-off sender would. Prints
one JSON line: the offset answer's state, where it resumed, how many chunks it
sent, and the last ACK's status (or "stopped").

Exit codes: 0 done or stopped as asked; 1 refused (`ERR`); 3 the answer breaks
the protocol.
"""

import hashlib
import json
import os
import secrets
import socket
import sys

from cryptography.fernet import Fernet, InvalidToken

CHUNK = 512 * 1024


class Refused(Exception):
    pass


class ProtocolViolation(Exception):
    pass


def read_line(f):
    line = f.readline(1024 * 1024 + 1)
    if not line.endswith(b"\n"):
        raise ProtocolViolation("no complete reply line")
    return line.rstrip(b"\r\n")


def ask(sock, f, agent_id, fernet, header, body=b""):
    """Sends one MSG and returns the opened ACK's header and reply text."""
    plaintext = json.dumps(header, separators=(",", ":")).encode() + b"\n" + body
    sock.sendall(b"MSG %d %s\n" % (agent_id, fernet.encrypt(plaintext)))
    verb, _, rest = read_line(f).partition(b" ")
    if verb == b"ERR":
        raise Refused(rest.decode("ascii", "replace"))
    if verb != b"ACK":
        raise ProtocolViolation("expected ACK or ERR")
    try:
        opened = fernet.decrypt(rest)
    except InvalidToken as e:
        raise ProtocolViolation("the ACK is not sealed under this agent's key") from e
    head, _, text = opened.partition(b"\n")
    answer = json.loads(head)
    if answer.get("v") != 1 or answer.get("id") != header["id"]:
        raise ProtocolViolation("the ACK does not echo our id")
    return answer, text.decode("utf-8")


def main(argv):
    if len(argv) not in (6, 7):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    addr, agent_id, key_path, path, file_id = argv[1], int(argv[2]), argv[3], argv[4], argv[5]
    stop_after = int(argv[6]) if len(argv) == 7 else None
    with open(key_path, "rb") as k:
        fernet = Fernet(k.read().strip())
    data = open(path, "rb").read()
    size, sha256 = len(data), hashlib.sha256(data).hexdigest()
    name = os.path.basename(path)
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            f = sock.makefile("rb")
            query = {"v": 1, "id": secrets.token_hex(16), "kind": "offset", "file_id": file_id}
            answer, _ = ask(sock, f, agent_id, fernet, query)
            if answer.get("status") != "offset":
                raise ProtocolViolation("not an offset answer")
            state = answer.get("state")
            if state == "none":
                start = 0
            elif state == "partial":
                if answer["size"] != size:
                    raise ProtocolViolation("the Boss holds another size: start over under a new file_id")
                # Every byte held but not recorded: send the last chunk again.
                start = answer["offset"] if answer["offset"] < size else max(0, size - CHUNK)
            elif state == "complete":
                if answer["sha256"] != sha256:
                    raise ProtocolViolation("another file is recorded under this file_id")
                print(json.dumps({"state": state, "resumed_from": size, "chunks": 0, "status": "duplicate"}))
                return 0
            else:
                raise ProtocolViolation(f"unknown state {state!r}")
            offset, chunks, status = start, 0, "stopped"
            while True:
                if stop_after is not None and chunks == stop_after:
                    break
                body = data[offset:offset + CHUNK]
                end = offset + len(body)
                header = {"v": 1, "id": secrets.token_hex(16), "kind": "file", "file_id": file_id,
                          "name": name, "offset": offset, "size": size}
                if end == size:
                    header["sha256"] = sha256
                ack, _ = ask(sock, f, agent_id, fernet, header, body)
                chunks += 1
                offset = end
                if end == size:
                    status = ack["status"]
                    break
    except Refused as e:
        print(f"resume_client: refused: {e}", file=sys.stderr)
        return 1
    except ProtocolViolation as e:
        print(f"resume_client: bad answer: {e}", file=sys.stderr)
        return 3
    print(json.dumps({"state": state, "resumed_from": start, "chunks": chunks, "status": status}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
