"""Image bytes in any S3-compatible store (AWS S3, SeaweedFS, MinIO, ...) through boto3.

Objects are ``<prefix>/<first two id chars>/<id>.png``: the same layout as the local folder, and a
stable spread of key prefixes. A PutObject is atomic per object (readers see the old object, the
whole new one, or none), so no temp objects exist and nothing partial can be left behind.

Every botocore error becomes ``StorageError`` here, saying what failed; the original stays chained
for the logs. Timeouts are short and retries few so that an unreachable store fails a request in
seconds, not in boto's default minutes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from cogserve.errors import StorageError
from cogserve.settings import StorageSettings
from cogserve.storage.image_store import ImageObject, is_image_id

# SigV4 refuses presigned URLs that live longer than 7 days.
MAX_PRESIGN_S = 7 * 86400
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0
# Attempts in all, the first included: one retry rides out a blip, more only delay the error.
MAX_ATTEMPTS = 2
CHUNK_BYTES = 64 * 1024
# DeleteObjects takes at most 1000 keys.
_DELETE_BATCH = 1000
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
_KEY_RE = re.compile(r"([A-Za-z0-9_-]{2})/([A-Za-z0-9_-]{32})\.png")


def parse_image_store(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


class S3ImageStore:
    """PNG objects under ``s3://bucket/prefix/`` (an ``ImageStore``)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._endpoint = endpoint_url

    @classmethod
    def from_settings(cls, storage: StorageSettings) -> S3ImageStore:
        if storage.image_store is None:
            raise ValueError("image_store is not set")
        bucket, prefix = parse_image_store(storage.image_store)
        secret = storage.s3_secret_access_key
        config = Config(
            region_name=storage.s3_region,
            signature_version="s3v4",
            # Custom endpoints (SeaweedFS, MinIO) rarely resolve bucket subdomains.
            s3={"addressing_style": "path" if storage.s3_endpoint_url else "auto"},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            # Up to the default worker-thread count, so concurrent requests don't drop connections.
            max_pool_connections=32,
            # Checksums only where S3 requires them: many S3-compatible stores reject the newer
            # default (CRC32 trailers in aws-chunked bodies).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # Keys left unset (None) let boto3 walk its standard chain: AWS_* variables, ~/.aws, roles.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=storage.s3_endpoint_url,
            aws_access_key_id=storage.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
            config=config,
        )
        return cls(client, bucket, prefix, storage.s3_endpoint_url)

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self._endpoint}" if self._endpoint else where

    def key_for(self, image_id: str) -> str:
        if not is_image_id(image_id):
            raise ValueError(f"not an image id: {image_id!r}")
        return f"{self._root}{image_id[:2]}/{image_id}.png"

    @property
    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def check(self) -> None:
        with self._translated("reach the bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:  # HEAD has no body, so no NoSuchBucket code
                    raise StorageError(f"the image store has no bucket '{self.bucket}'") from exc
                raise

    def write(self, image_id: str, data: bytes) -> None:
        key = self.key_for(image_id)
        with self._translated("store the image"):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="image/png")

    def delete(self, image_id: str) -> None:
        # DeleteObject succeeds for a key that is not there.
        key = self.key_for(image_id)
        with self._translated("delete the image"):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, image_ids: Sequence[str]) -> None:
        keys = [self.key_for(image_id) for image_id in image_ids]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
            with self._translated("delete images"):
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            # DeleteObjects answers 200 even when some keys failed; the failures are in the body.
            if errors := answer.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"the image store did not delete {len(errors)} of {len(batch)} images "
                    f"({first.get('Code', '?')}: {first.get('Message', '')})"
                )

    def size(self, image_id: str) -> int | None:
        key = self.key_for(image_id)
        with self._translated("look up the image"):
            try:
                head = self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    return None
                raise
        return int(head["ContentLength"])

    def exists(self, image_id: str) -> bool:
        return self.size(image_id) is not None

    def open(self, image_id: str) -> ImageObject | None:
        key = self.key_for(image_id)
        with self._translated("read the image"):
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    return None
                raise
        body = answer["Body"]
        return ImageObject(size=int(answer["ContentLength"]), chunks=self._chunks(body))

    def _chunks(self, body: Any) -> Iterator[bytes]:
        try:
            with self._translated("read the image"):
                yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def stored_ids(self, older_than_s: float = 0.0) -> Iterator[str]:
        cutoff = time.time() - older_than_s
        root = self._root
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root)
        with self._translated("list images"):
            for page in pages:
                for item in page.get("Contents", ()):
                    match = _KEY_RE.fullmatch(item["Key"][len(root) :])
                    if match is None or match.group(2)[:2] != match.group(1):
                        continue  # not ours: the bucket may hold other things beside the prefix
                    if item["LastModified"].timestamp() <= cutoff:
                        yield match.group(2)

    def remove_stale_temp_files(self, older_than_s: float) -> int:
        return 0  # a put is atomic per object: there are no partial writes to find

    def presigned_url(self, image_id: str, expires_in_s: int) -> str | None:
        expires = max(1, min(int(expires_in_s), MAX_PRESIGN_S))
        params = {
            "Bucket": self.bucket,
            "Key": self.key_for(image_id),
            # Signed into the URL: the store answers with the same caching as the /files route.
            "ResponseCacheControl": f"private, max-age={expires}, immutable",
        }
        with self._translated("sign an image URL"):
            url = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)
        return str(url)

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """Turn botocore's errors into ``StorageError`` saying what was being done, and why."""
        try:
            yield
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageError(
                f"could not {doing}: no credentials for the image store (set s3_access_key_id and "
                "s3_secret_access_key, or AWS credentials)"
            ) from exc
        except BotoConnectionError as exc:  # refused, unresolvable, connect timeout, TLS
            raise StorageError(f"could not {doing}: the image store is unreachable") from exc
        except HTTPClientError as exc:  # read timeout, connection dropped mid-answer
            raise StorageError(f"could not {doing}: the image store stopped answering") from exc
        except ClientError as exc:
            code = _code(exc)
            if code == "NoSuchBucket":
                reason = f"the image store has no bucket '{self.bucket}'"
            elif code in _DENIED:
                reason = f"the image store refused access ({code}); check the S3 credentials"
            else:
                reason = f"the image store answered {code}"
            raise StorageError(f"could not {doing}: {reason}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not {doing}: image store error ({type(exc).__name__})") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )
