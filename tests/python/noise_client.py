#!/usr/bin/env python3
"""A v2 client written from PROTOCOL.md only ("Version 2"), with PyPI
`noiseprotocol` for Noise and `cryptography` for Ed25519.

    noise_client.py ADDR AGENT_ID AGENT_IDENTITY_FILE BOSS_X25519_HEX BOSS_ED25519_HEX TEXT

AGENT_IDENTITY_FILE is the agent home's identity.key (`spyctl-identity-v1
<x25519 secret hex> <ed25519 secret hex>`). Runs the IK handshake against the
Boss's static key, sends TEXT as a signed text message (`sig` and `tsig`) in
one transport frame, checks the Boss's signed receipt in the ACK, and prints
the ACK's status (`stored`) and the Boss's clock skew in seconds.

Exit codes: 0 done; 1 refused (an authenticated error frame); 3 the answer
breaks the protocol.
"""

import base64
import hashlib
import json
import secrets
import socket
import sys
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from noise.connection import Keypair, NoiseConnection


def b64(data):
    return base64.urlsafe_b64encode(data).decode()


def unb64(text):
    return base64.urlsafe_b64decode(text.encode())


def fail(why, code=3):
    print(f"noise_client: {why}", file=sys.stderr)
    sys.exit(code)


def main():
    addr, agent_id, identity_file, boss_x_hex, boss_ed_hex, text = sys.argv[1:7]
    agent_id = int(agent_id)
    host, port = addr.rsplit(":", 1)
    tag, x_hex, ed_hex = open(identity_file).read().split()
    if tag != "spyctl-identity-v1":
        fail("not an identity file")
    boss_ed = bytes.fromhex(boss_ed_hex)

    noise = NoiseConnection.from_name(b"Noise_IK_25519_AESGCM_SHA256")
    noise.set_as_initiator()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, bytes.fromhex(x_hex))
    noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes.fromhex(boss_x_hex))
    noise.set_prologue(b"spyctl/v2")
    noise.start_handshake()

    sock = socket.create_connection((host, int(port)), timeout=10)
    lines = sock.makefile("rb")

    def send_line(prefix, data):
        sock.sendall(f"{prefix} {b64(data)}\n".encode())

    def read_line():
        line = lines.readline()
        if not line.endswith(b"\n"):
            fail("connection closed")
        return line.rstrip(b"\r\n").decode()

    hello = json.dumps({"v": 2, "agent": agent_id, "time": int(time.time())}).encode()
    send_line("NOISE", noise.write_message(hello))
    prefix, _, rest = read_line().partition(" ")
    if prefix != "NOISE":
        fail(f"expected the Boss's handshake, got {prefix}")
    welcome = json.loads(noise.read_message(unb64(rest)))
    if not noise.handshake_finished:
        fail("the handshake did not finish")
    skew = welcome["time"] - int(time.time())

    body = text.encode()
    msg_id = secrets.token_hex(16)
    now = int(time.time())
    statement = (
        f"spyctl/v2/message\nboss {boss_ed.hex()}\nagent {agent_id}\nid {msg_id}\nkind text\n"
        f"sha256 {hashlib.sha256(body).hexdigest()}\ntime {now}\n"
    ).encode()
    ed_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(ed_hex))
    sig = ed_key.sign(statement)
    # minisign's global signature: over sig || the statement's lines joined by spaces.
    trusted_comment = statement.decode().rstrip("\n").replace("\n", " ")
    tsig = ed_key.sign(sig + trusted_comment.encode())
    header = {"v": 1, "id": msg_id, "kind": "text", "ts": now, "sig": sig.hex(), "tsig": tsig.hex()}
    send_line("F", noise.encrypt(b"M" + json.dumps(header).encode() + b"\n" + body))

    prefix, _, rest = read_line().partition(" ")
    if prefix != "F":
        fail(f"expected a sealed frame, got {prefix}")
    frame = noise.decrypt(unb64(rest))
    if frame[:1] == b"E":
        fail(f"refused: {frame[1:].decode()}", code=1)
    if frame[:1] != b"A":
        fail("expected an ACK frame")
    ack = json.loads(frame[1:].split(b"\n", 1)[0])
    if ack["id"] != msg_id:
        fail("the ACK names another message")
    # The signed receipt ("Signed receipts"), checked with the Boss's key.
    receipt = (
        f"spyctl/v2/receipt\nboss {boss_ed.hex()}\nagent {agent_id}\nid {msg_id}\n"
        f"sha256 {hashlib.sha256(body).hexdigest()}\nstatus {ack['status']}\ntime {ack['ts']}\n"
    ).encode()
    try:
        Ed25519PublicKey.from_public_bytes(boss_ed).verify(bytes.fromhex(ack["sig"]), receipt)
    except (InvalidSignature, KeyError, ValueError):
        fail("the ACK's receipt is not signed by the Boss")
    print(ack["status"])
    print(skew)


if __name__ == "__main__":
    main()
