"""Prompt ids minted by the proxy carry their route.

ComfyUI is stateful per pod: `/history/{id}`, `/api/jobs/{id}`, queue deletes and `/interrupt`
must reach the pod that ran the prompt. Instead of remembering prompt -> pod in one process's
memory (lost on restart, not shared between replicas), the proxy writes the route into the id.
A minted id is an RFC 9562 UUIDv8 (custom) whose bits hold a hash of the model (application)
name and a hash of the pod name, plus 74 random bits:

    | model hash (16) | pod hash (32) | ver 8 (4) | random (12) | var (2) | random (62) |

Any proxy replica, before or after a restart, decodes an id and finds the pod among the
application's current pods by hash. A prompt whose pod is gone is then answered 404 at once.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass


def _hash(text: str, bits: int) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - bits)


def model_hash(model: str) -> int:
    return _hash(f"model:{model}", 16)


def pod_hash(pod: str) -> int:
    return _hash(f"pod:{pod}", 32)


@dataclass(frozen=True)
class Route:
    model_hash: int
    pod_hash: int


def mint(model: str, pod: str) -> str:
    """A fresh prompt id routed to `pod` of `model`."""
    rand = secrets.randbits(74)
    value = (model_hash(model) << 112) | (pod_hash(pod) << 80)
    value |= 0x8 << 76  # version 8
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def decode(prompt_id: str) -> Route | None:
    """The route in a proxy-minted id; None for any other id (not ours, not a UUID)."""
    try:
        value = uuid.UUID(prompt_id)
    except (ValueError, AttributeError, TypeError):
        return None
    if value.version != 8 or value.variant != uuid.RFC_4122:
        return None
    number = value.int
    return Route(model_hash=number >> 112, pod_hash=(number >> 80) & 0xFFFFFFFF)
