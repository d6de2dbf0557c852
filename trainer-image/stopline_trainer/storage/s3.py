"""Checkpoints in an S3-compatible object store: multipart upload of the weights, manifest last.

Endpoint and credentials come from the environment: STOPLINE_S3_ENDPOINT or AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from . import Fill


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str, part_size: int) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size

    @classmethod
    def from_uri(cls, uri: str, *, part_size: int) -> S3Store:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"STOPLINE_CHECKPOINT_URI={uri!r}: no bucket")
        endpoint = os.environ.get("STOPLINE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        config = BotoConfig(
            retries={"max_attempts": 5, "mode": "standard"},
            # path-style works with every S3-compatible server; virtual hosts need DNS per bucket
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        client = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)
        return cls(client, bucket, prefix, part_size)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def write_blob(self, name: str, fill: Fill, midway: Callable[[], None]) -> None:
        """Spool to local disk (the state may be larger than memory), then upload part by part.

        The object appears only when CompleteMultipartUpload succeeds; a failure aborts the upload.
        """
        with tempfile.TemporaryFile() as spool:
            fill(spool)
            spool.seek(0)
            key = self.key(name)
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            try:
                parts = []
                number = 1
                while chunk := spool.read(self.part_size):
                    r = self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    parts.append({"PartNumber": number, "ETag": r["ETag"]})
                    if number == 1:
                        midway()
                    number += 1
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                raise

    def write_small(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)

    def read_small(self, name: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        data: bytes = body.read()
        return data

    @contextmanager
    def read_blob(self, name: str) -> Iterator[BinaryIO]:
        with tempfile.TemporaryFile() as spool:
            self.client.download_fileobj(self.bucket, self.key(name), spool)
            spool.seek(0)
            yield spool

    def names(self) -> Iterator[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for obj in page.get("Contents", []):
                rest = str(obj["Key"])[len(start) :]
                if "/" not in rest:
                    yield rest

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(name))
