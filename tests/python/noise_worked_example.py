#!/usr/bin/env python3
"""PROTOCOL.md's Noise worked example, remade with PyPI `noiseprotocol`.

    noise_worked_example.py AGENT_S BOSS_S AGENT_E BOSS_E HELLO WELCOME MESSAGE ACK

All arguments are hex: the agent's and the Boss's static X25519 secrets,
the two fixed ephemeral secrets, then the four plaintexts (the handshake
payloads and the two transport frames). Runs both sides of
Noise_IK_25519_AESGCM_SHA256 with prologue `spyctl/v2` and prints the four
lines as they cross the wire (`NOISE <base64url>`, `NOISE ...`, `F ...`,
`F ...`), so a test can compare them with spyctl's and the document's.
"""

import base64
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection


def side(initiator, static, ephemeral, remote_static=None):
    noise = NoiseConnection.from_name(b"Noise_IK_25519_AESGCM_SHA256")
    if initiator:
        noise.set_as_initiator()
        noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    else:
        noise.set_as_responder()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, static)
    noise.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    noise.set_prologue(b"spyctl/v2")
    noise.start_handshake()
    return noise


def main():
    agent_s, boss_s, agent_e, boss_e, hello, welcome, message, ack = (bytes.fromhex(a) for a in sys.argv[1:9])
    boss = side(False, boss_s, boss_e)
    boss_public = X25519PrivateKey.from_private_bytes(boss_s).public_key().public_bytes_raw()
    agent = side(True, agent_s, agent_e, boss_public)
    line = lambda kind, data: print(f"{kind} {base64.urlsafe_b64encode(data).decode()}")

    first = agent.write_message(hello)
    assert boss.read_message(first) == hello
    line("NOISE", first)
    second = boss.write_message(welcome)
    assert agent.read_message(second) == welcome
    line("NOISE", second)
    assert agent.handshake_finished and boss.handshake_finished
    frame = agent.encrypt(message)
    assert boss.decrypt(frame) == message
    line("F", frame)
    frame = boss.encrypt(ack)
    assert agent.decrypt(frame) == ack
    line("F", frame)


if __name__ == "__main__":
    main()
