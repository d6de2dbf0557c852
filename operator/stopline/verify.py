"""Whether the weights a checkpoint pointer names are there, with the size it says: HEAD on the object store.

Rank 0's termination message is the trainer's word; an object store can be asked without reading the
weights, so before a TrainingJob shows a checkpoint on an object store the operator asks (condition
CheckpointVerified). A claim cannot be asked: the operator mounts no volume, so a PVC checkpoint gets no
such condition. The answer is only ever a condition: weights that are there but cannot be checked are
not thrown away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from stopline.api import ObjectStoreTarget, TrainingJobSpec
from stopline.kube import Kube
from stopline.lifecycle import Condition
from stopline.metrics.http import excerpt
from stopline.vocabulary import (
    CHECKPOINT_VERIFIED,
    OBJECT_MISSING,
    OBJECT_OUTSIDE_TARGET,
    OBJECT_SIZE_MISMATCH,
    OBJECT_UNCHECKED,
    OBJECT_VERIFIED,
)

TIMEOUT_S = 5.0
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _bucket_and_key(uri: str) -> tuple[str, str] | None:
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return (bucket, key) if bucket and key else None


async def verify_checkpoint(
    kube: Kube, namespace: str, spec: TrainingJobSpec, checkpoint: Mapping[str, Any]
) -> Condition | None:
    """CheckpointVerified for an object-store checkpoint; None for a PVC one (nothing to ask)."""
    target = spec.checkpoint.target
    if not isinstance(target, ObjectStoreTarget):
        return None
    uri = str(checkpoint.get("uri") or "")
    where = _bucket_and_key(uri)
    if where is None or not uri.startswith(target.uri.rstrip("/") + "/"):
        message = f"the trainer named {excerpt(uri)!r}, which is not under spec.checkpoint.objectStore.uri"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_OUTSIDE_TARGET, message)
    credentials: dict[str, str] = {}
    if target.credentials_secret:
        for key in CREDENTIAL_KEYS:
            value = await kube.read_token(namespace, target.credentials_secret, key)
            if value:
                credentials[key] = value
    try:
        length = await asyncio.to_thread(_head, target, credentials, *where)
    except Exception as error:  # boto3 missing, no route, refused, a server that is not S3: all unchecked
        message = f"HEAD {excerpt(uri)} failed: {excerpt(f'{type(error).__name__}: {error}')}"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_UNCHECKED, message)
    expected = checkpoint.get("bytes")
    if length is None:
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_MISSING, f"{excerpt(uri)} does not exist")
    if isinstance(expected, int) and length != expected:
        message = f"{excerpt(uri)} has {length} bytes, the trainer's manifest says {expected}"
        return Condition(CHECKPOINT_VERIFIED, False, OBJECT_SIZE_MISMATCH, message)
    message = f"{excerpt(uri)} exists with {length} bytes, as the trainer's manifest says"
    return Condition(CHECKPOINT_VERIFIED, True, OBJECT_VERIFIED, message)


def _head(target: ObjectStoreTarget, credentials: Mapping[str, str], bucket: str, key: str) -> int | None:
    """The object's size, None when it does not exist (S3 answers 404). Runs in a thread: boto3 blocks."""
    import boto3  # the s3 extra: an operator without it reports the checkpoint as unchecked
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    # Only the TrainingJob's own credentials, never the operator's ambient ones (its environment, its
    # instance or pod identity): without a Secret the request goes unsigned, as to a public bucket.
    signed = "AWS_ACCESS_KEY_ID" in credentials and "AWS_SECRET_ACCESS_KEY" in credentials
    config = Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S, retries={"max_attempts": 1})
    if not signed:
        config = config.merge(Config(signature_version=UNSIGNED))
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=target.endpoint,
        region_name=target.region or "us-east-1",
        aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID") if signed else None,
        aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY") if signed else None,
        config=config,
    )
    try:
        answer = client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return int(answer["ContentLength"])
