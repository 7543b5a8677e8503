#!/usr/bin/env python3
"""Computes the safety-number known answer independently of qpq-core.

Ed25519 public keys come from the `cryptography` package, SHA-512 from hashlib, and the
format follows docs/security-model.md. Run: python3 safety_number.py
"""
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def public(seed_byte):
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32)
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def digits(ident, key):
    h = hashlib.sha512((1).to_bytes(2, "big") + key + ident.encode()).digest()
    for _ in range(5200):
        h = hashlib.sha512(h + key).digest()
    return "".join("%05d" % (int.from_bytes(h[i : i + 5], "big") % 100000) for i in range(0, 30, 5))


alice, bob = public(1), public(2)
print("alice key", alice.hex())
print("bob key  ", bob.hex())
print("number   ", "".join(sorted([digits("alice", alice), digits("bob", bob)])))
