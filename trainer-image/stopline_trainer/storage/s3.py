"""Checkpoints in an S3-compatible object store: multipart upload of the weights, manifest last.

Endpoint and credentials come from the environment: STOPLINE_S3_ENDPOINT or AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from . import Fill

PARTS_IN_FLIGHT = 4  # boto3's upload_file sends 10 at once; 4 reach the same speed to one local server
CHUNK = 1 << 20
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


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
        # a session of its own: the default one keeps the credentials it found first, whatever the env says
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region, config=config
        )
        return cls(client, bucket, prefix, part_size)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def write_blob(self, name: str, fill: Fill, midway: Callable[[], None]) -> None:
        """Upload part by part while the state is being written: nothing is spooled to disk, and up to
        PARTS_IN_FLIGHT parts go up at once (memory: that many parts and one being filled).

        The object appears only when CompleteMultipartUpload succeeds; a failure aborts the upload.
        """
        key = self.key(name)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            with ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part") as pool:
                parts = _Parts(self, key, upload_id, pool, midway)
                fill(parts)  # type: ignore[arg-type]  # write-only: torch.save needs write and flush
                uploaded = parts.close()
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": uploaded}
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

    def put_file(self, name: str, source: Path) -> tuple[int, str]:
        """One PutObject for a file smaller than a part, else a multipart upload read as it goes."""
        h, size = hashlib.sha256(), 0
        if source.stat().st_size < self.part_size:
            data = source.read_bytes()
            self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)
            return len(data), hashlib.sha256(data).hexdigest()

        def fill(stream: BinaryIO) -> None:
            nonlocal size
            with open(source, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    stream.write(chunk)

        self.write_blob(name, fill, lambda: None)
        return size, h.hexdigest()

    def local_path(self, name: str) -> Path | None:
        return None

    def download(self, name: str, target: Path) -> None:
        with open(target, "wb") as f:
            self.client.download_fileobj(self.bucket, self.key(name), f)

    def staging(self, name: str, token: str) -> str:
        return name  # objects appear one by one anyway: the manifest, written last, is the commit

    def commit_folder(self, staging: str, name: str) -> None:
        return None

    def folders(self) -> Iterator[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start, Delimiter="/"
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                yield str(common["Prefix"])[len(start) :].rstrip("/")

    def delete_folder(self, name: str) -> None:
        start = self.key(name) + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            for i in range(0, len(keys), DELETE_BATCH):
                batch = keys[i : i + DELETE_BATCH]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


class _Parts:
    """A write-only stream that cuts what it is given into parts and uploads each as soon as it is full.

    midway() runs once the first part is up, before any other is sent (the fault tests pause there and
    find exactly one part). An upload error is raised from the next write or from close().
    """

    def __init__(
        self, store: S3Store, key: str, upload_id: str, pool: ThreadPoolExecutor, midway: Callable[[], None]
    ) -> None:
        self._store, self._key, self._upload_id, self._pool = store, key, upload_id, pool
        self._midway = midway
        self._filling = bytearray()
        self._in_flight: deque[Future[dict[str, Any]]] = deque()
        self._done: list[dict[str, Any]] = []

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        size = self._store.part_size
        while view:
            room = size - len(self._filling)
            self._filling += view[:room]
            view = view[room:]
            if len(self._filling) == size:
                self._send()
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> list[dict[str, Any]]:
        """Send the last part and wait for every part; the parts in order, as CompleteMultipartUpload
        wants them."""
        if self._filling or not (self._done or self._in_flight):
            self._send()
        while self._in_flight:
            self._done.append(self._in_flight.popleft().result())
        return self._done

    def _send(self) -> None:
        number = len(self._done) + len(self._in_flight) + 1
        future = self._pool.submit(self._upload, number, bytes(self._filling))
        self._filling.clear()
        self._in_flight.append(future)
        if number == 1:
            self._done.append(self._in_flight.popleft().result())
            self._midway()
        while len(self._in_flight) >= PARTS_IN_FLIGHT:
            self._done.append(self._in_flight.popleft().result())

    def _upload(self, number: int, chunk: bytes) -> dict[str, Any]:
        store = self._store
        answer = store.client.upload_part(
            Bucket=store.bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=chunk
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}
