"""Object-store access (any S3-compatible server) with errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from autolabel.errors import BucketNotFoundError, InvalidInputError, ObjectNotFoundError, StorageError
from autolabel.settings import Settings

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key)."""
    if not uri.startswith("s3://"):
        raise InvalidInputError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise InvalidInputError(f"{uri!r} must name a bucket and a key: s3://BUCKET/KEY")
    return bucket, key


class ObjectStore:
    """One bucket of an S3-compatible store. boto3 clients are thread-safe; share one instance."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    @classmethod
    def from_settings(
        cls, settings: Settings, *, connect_timeout: float = 5, retries: int = 3, max_pool: int = 32
    ) -> ObjectStore:
        secret = settings.s3_secret_access_key
        key_id = settings.s3_access_key_id
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=max(connect_timeout, 30),
                retries={"max_attempts": retries + 1, "mode": "standard"},
                max_pool_connections=max_pool,
                s3={"addressing_style": "path"},
            ),
        )
        return cls(client, settings.bucket)

    def _fail(self, action: str, key: str, exc: Exception, bucket: str | None = None) -> StorageError:
        code = str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""
        bucket = bucket or self.bucket
        where = f"s3://{bucket}/{key}"
        if code == "NoSuchBucket":
            return self._no_bucket(bucket)
        if code in _MISSING_CODES:
            return ObjectNotFoundError(f"{where} does not exist ({action})")
        return StorageError(f"cannot {action} {where}: {exc}")

    def _no_bucket(self, bucket: str) -> BucketNotFoundError:
        return BucketNotFoundError(
            f"bucket {bucket!r} does not exist at {self.client.meta.endpoint_url}; create it with "
            f"`autolabel doctor --create-bucket` (AUTOLABEL_BUCKET) or `aws s3 mb s3://{bucket}`")

    def check_bucket(self) -> None:
        """Raise BucketNotFoundError when the bucket is missing, StorageError when the store does not answer."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # HEAD responses have no body: a missing bucket is a bare 404.
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING_CODES | {"NoSuchBucket"}:
                raise self._no_bucket(self.bucket) from exc
            raise self._fail("reach bucket", "", exc) from exc
        except BotoCoreError as exc:
            raise self._fail("reach bucket", "", exc) from exc

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: dict[str, str] | None = None) -> None:
        """Write an object; ``metadata`` becomes its user metadata (``x-amz-meta-*``), read back by ``metadata``."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                   Metadata=metadata or {})
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("write", key, exc) from exc

    def download(self, key: str, target: Path, *, bucket: str | None = None) -> None:
        """Copy an object to a local file; ``bucket`` defaults to the store's (a source video may be elsewhere)."""
        try:
            self.client.download_file(bucket or self.bucket, key, str(target))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("read", key, exc, bucket) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("read", key, exc) from exc

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        """An object's bytes and its user metadata, in one request: to write it again with the same metadata."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), dict(response.get("Metadata", {}))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("read", key, exc) from exc

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("stat", key, exc) from exc

    def metadata(self, key: str) -> dict[str, str] | None:
        """The object's user metadata from a HEAD request, or None when there is no such object."""
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key).get("Metadata", {}))
        except (BotoCoreError, ClientError) as exc:
            error = self._fail("stat", key, exc)
            if isinstance(error, ObjectNotFoundError):
                return None
            raise error from exc

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFoundError:
            return False
        return True

    def put_json(self, key: str, value: BaseModel | dict[str, Any] | list[Any],
                 metadata: dict[str, str] | None = None) -> None:
        if isinstance(value, BaseModel):
            data = value.model_dump_json(indent=None).encode()
        else:
            data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        self.put_bytes(key, data, "application/json", metadata)

    def get_json(self, key: str) -> Any:
        try:
            return json.loads(self.get_bytes(key))
        except json.JSONDecodeError as exc:
            raise StorageError(f"s3://{self.bucket}/{key} is not valid JSON: {exc}") from exc

    def delete_keys(self, keys: list[str]) -> None:
        """Delete objects (1,000 per request); a key that does not exist is no error."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            try:
                response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise self._fail("delete", batch[0]["Key"], exc) from exc
            if errors := response.get("Errors"):
                raise StorageError(f"cannot delete {len(errors)} objects in s3://{self.bucket}, first "
                                   f"{errors[0].get('Key')}: {errors[0].get('Message')}")

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list", prefix, exc) from exc
        return keys
