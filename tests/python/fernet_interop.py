#!/usr/bin/env python3
"""Fernet interoperability helper for tests/all/python_interop.rs.

    fernet_interop.py open KEY   stdin: one token per line    stdout: plaintext hex per line
    fernet_interop.py seal KEY   stdin: one hex plaintext per line    stdout: token per line

Every input line is one record, empty lines included (an empty hex line is the
empty plaintext), and each record gives exactly one output line, in order.
Tokens are decrypted with no TTL. Any error exits non-zero with a message on stderr.
"""

import sys

try:
    from cryptography.fernet import Fernet, InvalidToken
except ImportError as e:
    sys.exit(f"fernet_interop.py: cannot import cryptography.fernet ({e}); pip install -r requirements-dev.txt")


def records():
    """Yields (line number, line) for each stdin line, without its line ending."""
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        yield number, raw.rstrip(b"\r\n")


def main(argv):
    if len(argv) != 3 or argv[1] not in ("open", "seal"):
        sys.exit("usage: fernet_interop.py open|seal KEY  (records on stdin, one per line)")
    mode, key = argv[1], argv[2]
    try:
        fernet = Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        sys.exit(f"fernet_interop.py: bad key: {e}")

    out = sys.stdout.buffer
    for number, line in records():
        if mode == "open":
            try:
                plaintext = fernet.decrypt(line)
            except InvalidToken:
                sys.exit(f"fernet_interop.py: line {number}: invalid token")
            out.write(plaintext.hex().encode("ascii") + b"\n")
        else:
            try:
                plaintext = bytes.fromhex(line.decode("ascii"))
            except (ValueError, UnicodeDecodeError) as e:
                sys.exit(f"fernet_interop.py: line {number}: not hex: {e}")
            out.write(fernet.encrypt(plaintext) + b"\n")
    out.flush()


if __name__ == "__main__":
    main(sys.argv)
