"""The operator checks a checkpoint pointer against a real S3 server (versitygw) before it shows it:
the object must exist under the TrainingJob's own prefix with the manifest's size."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from stopline.api import parse_spec
from stopline.verify import verify_checkpoint
from stopline_local.s3server import S3Server

pytestmark = pytest.mark.trainer

WEIGHTS = b"w" * 4096


class SecretsOnly:
    """Stand-in for the operator's Kube client: only the Secret read verify_checkpoint makes."""

    def __init__(self, data: Mapping[str, str]) -> None:
        self.data = data

    async def read_token(self, namespace: str, secret: str, key: str) -> str | None:
        return self.data.get(key)


def spec(server: S3Server, secret: str | None = "s3-credentials") -> Any:
    store: dict[str, Any] = {"uri": "s3://ckpts/runs/a", "endpoint": server.endpoint, "region": "us-east-1"}
    if secret:
        store["credentialsSecret"] = secret
    return parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "trainer", "image": "t:1"}]}},
            "objective": {"metric": "val_loss", "mode": "min"},
            "checkpoint": {"objectStore": store},
        }
    )


def verified(server: S3Server, pointer: Mapping[str, Any], secret: str | None = "s3-credentials") -> Any:
    kube = SecretsOnly({key: server.env()[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    condition = asyncio.run(verify_checkpoint(kube, "ns", spec(server, secret), pointer))  # type: ignore[arg-type]
    assert condition is not None and condition.type == "CheckpointVerified"
    return condition


def test_a_checkpoint_is_verified_only_where_it_is_with_its_size(s3_server: S3Server) -> None:
    s3 = s3_server.client()
    s3.create_bucket(Bucket="ckpts")
    s3.put_object(Bucket="ckpts", Key="runs/a/ckpt-1.pt", Body=WEIGHTS)
    there = {"uri": "s3://ckpts/runs/a/ckpt-1.pt", "bytes": len(WEIGHTS)}

    ok = verified(s3_server, there)
    assert (ok.status, ok.reason) == (True, "ObjectVerified") and "4096 bytes" in ok.message
    short = verified(s3_server, there | {"bytes": len(WEIGHTS) + 1})
    assert (short.status, short.reason) == (False, "SizeMismatch")
    gone = verified(s3_server, there | {"uri": "s3://ckpts/runs/a/ckpt-2.pt"})
    assert (gone.status, gone.reason) == (False, "ObjectMissing")
    elsewhere = verified(s3_server, there | {"uri": "s3://attacker-bucket/runs/a/ckpt-1.pt"})
    assert (elsewhere.status, elsewhere.reason) == (False, "OutsideTarget")
    unsigned = verified(s3_server, there, secret=None)  # never the operator's own credentials
    assert (unsigned.status, unsigned.reason) == (False, "Unchecked")
