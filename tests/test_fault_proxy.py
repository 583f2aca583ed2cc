"""The fault proxy itself (tests/fault_proxy.py): each fault is what an S3 client sees, the schedules
do what they say, and a healthy proxy is transparent. boto3 with retries off, so every fault shows."""

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from fault_proxy import FaultProxy
from services import ACCESS_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.integration
pytest_plugins = ["services"]

NETWORK_ERRORS = (ConnectionClosedError, EndpointConnectionError, ConnectionError)


@pytest.fixture
def proxy(s3_buckets):
    with FaultProxy(s3_buckets.endpoint, stall_s=1.5) as running:
        yield running


def client_of(proxy: FaultProxy):
    return boto3.client("s3", endpoint_url=proxy.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION,
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                                      read_timeout=10))


def test_a_healthy_proxy_is_transparent(s3_buckets, proxy):
    client = client_of(proxy)
    body = bytes(range(256)) * 4000  # ~1 MB
    client.put_object(Bucket="inputs", Key="a/b.bin", Body=body)
    assert client.get_object(Bucket="inputs", Key="a/b.bin")["Body"].read() == body
    assert client.head_object(Bucket="inputs", Key="a/b.bin")["ContentLength"] == len(body)
    assert [o["Key"] for o in client.list_objects_v2(Bucket="inputs")["Contents"]] == ["a/b.bin"]
    client.delete_object(Bucket="inputs", Key="a/b.bin")
    assert "Contents" not in s3_buckets.client().list_objects_v2(Bucket="inputs")
    assert proxy.requests == 5 and not proxy.injected


@pytest.mark.parametrize(("fault", "code"), [("500", "InternalError"), ("503", "ServiceUnavailable"),
                                             ("slowdown", "SlowDown")])
def test_error_answers_carry_the_s3_error_code(s3_buckets, proxy, fault, code):
    proxy.fail_next(1, fault)
    with pytest.raises(ClientError) as raised:
        client_of(proxy).put_object(Bucket="inputs", Key="x", Body=b"x")
    assert raised.value.response["Error"]["Code"] == code
    assert "Contents" not in s3_buckets.client().list_objects_v2(Bucket="inputs")  # never reached the server


@pytest.mark.parametrize("fault", ["drop", "reset"])
def test_dropped_connections_fail_without_reaching_the_server(s3_buckets, proxy, fault):
    proxy.fail_next(1, fault)
    with pytest.raises(NETWORK_ERRORS):
        client_of(proxy).put_object(Bucket="inputs", Key="x", Body=b"x")
    assert "Contents" not in s3_buckets.client().list_objects_v2(Bucket="inputs")


def test_a_lost_answer_takes_effect_on_the_server(s3_buckets, proxy):
    proxy.fail_next(1, "lost")
    with pytest.raises(NETWORK_ERRORS):
        client_of(proxy).put_object(Bucket="inputs", Key="x", Body=b"stored")
    assert s3_buckets.client().get_object(Bucket="inputs", Key="x")["Body"].read() == b"stored"


def test_a_stall_delays_then_answers(s3_buckets, proxy):
    proxy.fail_next(1, "stall")
    started = time.monotonic()
    client_of(proxy).put_object(Bucket="inputs", Key="x", Body=b"late")
    assert time.monotonic() - started >= 1.5
    assert s3_buckets.client().get_object(Bucket="inputs", Key="x")["Body"].read() == b"late"


def test_fail_next_only_hits_matching_requests_then_stops(s3_buckets, proxy):
    client = client_of(proxy)
    proxy.fail_next(2, "503", match=lambda method, path: method == "GET")
    client.put_object(Bucket="inputs", Key="x", Body=b"x")  # a PUT: not eligible
    for _ in range(2):
        with pytest.raises(ClientError):
            client.get_object(Bucket="inputs", Key="x")
    assert client.get_object(Bucket="inputs", Key="x")["Body"].read() == b"x"
    assert [fault for _, _, fault in proxy.log] == [None, "503", "503", None]


def test_a_seeded_fraction_is_reproducible_and_near_its_rate(s3_buckets, proxy):
    def faults_in_sequence() -> list[str | None]:
        proxy.fail_fraction(0.2, seed=5, faults=("500", "503"))
        client, outcomes = client_of(proxy), []
        for _ in range(100):
            try:
                client.head_bucket(Bucket="inputs")
                outcomes.append(None)
            except ClientError as err:
                outcomes.append(err.response["Error"]["Code"])
        return outcomes

    first, second = faults_in_sequence(), faults_in_sequence()
    assert first == second  # one client, one request at a time: the same draws
    assert 10 <= sum(outcome is not None for outcome in first) <= 30


def test_refusing_everything_then_healing(s3_buckets, proxy):
    client = client_of(proxy)
    proxy.refuse_everything()
    for _ in range(3):
        with pytest.raises(NETWORK_ERRORS):
            client.head_bucket(Bucket="inputs")
    proxy.heal()
    client.head_bucket(Bucket="inputs")
    assert proxy.injected["refused"] + proxy.injected["reset"] == 3
