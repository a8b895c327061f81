#!/usr/bin/env python3
"""An enrolled agent written from PROTOCOL.md only ("Enrolment", "Signed messages and files", "Signed receipts").

    join_client.py ADDR CODE TEXT

Joins the Boss at ADDR (HOST:PORT) with the one-time CODE (from
`spyctl agent enroll`), using PyPI `spake2` (python-spake2) for SPAKE2 and
`cryptography` for X25519, Ed25519, HKDF, HMAC and Fernet. Then sends TEXT as a
signed text message over the channel key, checks the Boss's signed receipt in
the ACK and prints three lines: the agent's fingerprint, the Boss's
fingerprint and the ACK status (`stored`).

Exit codes: 0 done; 1 refused (`ERR`), 3 a confirmation failed or the answer
breaks the protocol.
"""

import base64
import hashlib
import hmac
import json
import secrets
import socket
import sys
import time

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A


def hkdf(ikm, info, salt=None):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info.encode()).derive(ikm)


def raw(key):
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(x25519, ed25519):
    digest = hashlib.sha256(b"spyctl/v2/fingerprint\n" + x25519 + ed25519).digest()
    text = base64.b32encode(digest[:10]).decode()
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


class Line:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.file = self.sock.makefile("rb")

    def ask(self, line):
        self.sock.sendall(line.encode() + b"\n")
        reply = self.file.readline().decode().rstrip("\r\n")
        if reply.startswith("ERR "):
            print(reply, file=sys.stderr)
            sys.exit(1)
        return reply.split(" ")


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(3)


def main():
    addr, code, text = sys.argv[1:4]
    agent_id = int(code.split("-")[0])
    password = hashlib.sha256(b"spyctl/v2/join-code\n" + code.strip().lower().encode()).digest()
    spake = SPAKE2_A(password, idA=f"spyctl/v2/agent/{agent_id}".encode(), idB=b"spyctl/v2/boss")
    msg_a = spake.start()

    line = Line(addr)
    verb, msg_b, boss_x, boss_ed, confirm = line.ask(f"JOIN {agent_id} {msg_a.hex()}")
    if verb != "JOIN":
        fail("expected JOIN")
    msg_b, boss_x, boss_ed, confirm = (bytes.fromhex(v) for v in (msg_b, boss_x, boss_ed, confirm))
    key = spake.finish(msg_b)
    k_boss = hkdf(key, "spyctl/v2/join/boss-confirm")
    k_agent = hkdf(key, "spyctl/v2/join/agent-confirm")
    k_done = hkdf(key, "spyctl/v2/join/boss-done")
    t1 = hashlib.sha256(f"spyctl/v2/join\n{agent_id}\n".encode() + msg_a + msg_b + boss_x + boss_ed).digest()
    if not hmac.compare_digest(hmac.new(k_boss, t1, "sha256").digest(), confirm):
        fail("the Boss's confirmation does not match: wrong code")

    x_key, ed_key = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    my_x, my_ed = raw(x_key.public_key()), raw(ed_key.public_key())
    t2 = hashlib.sha256(t1 + my_x + my_ed).digest()
    possession = ed_key.sign(b"spyctl/v2/join/possession\n" + t2)
    agent_confirm = hmac.new(k_agent, t2 + possession, "sha256").digest()
    verb, done = line.ask(f"JOIN2 {my_x.hex()} {my_ed.hex()} {possession.hex()} {agent_confirm.hex()}")
    if verb != "JOINED" or not hmac.compare_digest(hmac.new(k_done, t2, "sha256").digest(), bytes.fromhex(done)):
        fail("the Boss did not confirm the enrolment")

    # The channel key: HKDF over the X25519 agreement.
    shared = x_key.exchange(X25519PublicKey.from_public_bytes(boss_x))
    channel = hkdf(shared, f"spyctl/v2/channel/{agent_id}", salt=boss_x + my_x)
    fernet = Fernet(base64.urlsafe_b64encode(channel))
    body = text.encode()
    msg_id = secrets.token_hex(16)
    now = int(time.time())
    statement = (
        f"spyctl/v2/message\nboss {boss_ed.hex()}\nagent {agent_id}\nid {msg_id}\nkind text\n"
        f"sha256 {hashlib.sha256(body).hexdigest()}\ntime {now}\n"
    ).encode()
    sig = ed_key.sign(statement)
    # minisign's global signature: over sig || the statement's lines joined by spaces.
    trusted_comment = statement.decode().rstrip("\n").replace("\n", " ")
    tsig = ed_key.sign(sig + trusted_comment.encode())
    header = {"v": 1, "id": msg_id, "kind": "text", "ts": now, "sig": sig.hex(), "tsig": tsig.hex()}
    token = fernet.encrypt(json.dumps(header).encode() + b"\n" + body).decode()
    verb, ack = line.ask(f"MSG {agent_id} {token}")
    if verb != "ACK":
        fail("expected ACK")
    plain = fernet.decrypt(ack.encode())
    ack_header = json.loads(plain.split(b"\n", 1)[0])
    if ack_header["id"] != msg_id:
        fail("the ACK names another message")
    # The signed receipt ("Signed receipts"), checked with the Boss's key.
    receipt = (
        f"spyctl/v2/receipt\nboss {boss_ed.hex()}\nagent {agent_id}\nid {msg_id}\n"
        f"sha256 {hashlib.sha256(body).hexdigest()}\nstatus {ack_header['status']}\ntime {ack_header['ts']}\n"
    ).encode()
    try:
        Ed25519PublicKey.from_public_bytes(boss_ed).verify(bytes.fromhex(ack_header["sig"]), receipt)
    except (InvalidSignature, KeyError, ValueError):
        fail("the ACK's receipt is not signed by the Boss")
    print(fingerprint(my_x, my_ed))
    print(fingerprint(boss_x, boss_ed))
    print(ack_header["status"])


if __name__ == "__main__":
    main()
