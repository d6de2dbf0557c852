"""The S3 store uploads parts while the state is written: order kept, and a failed part aborts the save."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

import pytest
from botocore.exceptions import ClientError

from stopline_local.s3server import S3Server
from stopline_trainer.storage.s3 import PARTS_IN_FLIGHT, S3Store

pytestmark = pytest.mark.trainer

MIB = 1024 * 1024
PART = 5 * MIB


def writer(data: bytes, chunk: int) -> tuple[list[int], Callable[[BinaryIO], None]]:
    """A fill that writes `data` in pieces of `chunk` bytes (torch.save writes small headers and whole
    tensors), counting the writes."""
    writes: list[int] = []

    def fill(stream: BinaryIO) -> None:
        for start in range(0, len(data), chunk):
            writes.append(stream.write(data[start : start + chunk]))

    return writes, fill


@pytest.mark.parametrize("chunk", [7 * MIB + 3, 4096 + 1, 3 * PART * (PARTS_IN_FLIGHT + 2)])
def test_parts_in_flight_come_back_in_order(s3_server: S3Server, chunk: int) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="bucket")
    store = S3Store(client, "bucket", "p", PART)
    data = os.urandom(PART * (PARTS_IN_FLIGHT + 3) + 12345)  # more parts than go up at once, a short last
    writes, fill = writer(data, chunk)
    store.write_blob("blob", fill, lambda: None)
    assert sum(writes) == len(data)
    assert client.get_object(Bucket="bucket", Key="p/blob")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket="bucket").get("Uploads", []) == []


def test_a_part_that_fails_fails_the_save_and_no_object_appears(s3_server: S3Server) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket="bucket")
    store = S3Store(client, "bucket", "p", PART)

    def cancel_upload() -> None:  # a real server fault: the upload is gone once the first part is up
        (upload,) = client.list_multipart_uploads(Bucket="bucket")["Uploads"]
        client.abort_multipart_upload(Bucket="bucket", Key=upload["Key"], UploadId=upload["UploadId"])

    _, fill = writer(os.urandom(PART * (PARTS_IN_FLIGHT + 3)), MIB)
    with pytest.raises(ClientError):
        store.write_blob("blob", fill, cancel_upload)
    assert client.list_objects_v2(Bucket="bucket").get("Contents", []) == []
