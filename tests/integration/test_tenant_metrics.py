"""Per-tenant counters on Triton's metrics port (issue 11 §2): rows by head and code, requests and
their seconds by head, made-up head names folded into ``(other)``."""

from __future__ import annotations

import secrets

import pytest
from headroom.client.inference import HeadroomError
from headroom.client.metrics import read_metrics
from headroom.tenant_metrics import OTHER_HEAD

from tests.polling import wait_for

pytestmark = pytest.mark.integration

ROWS = "headroom_tenant_rows_total"
REQUESTS = "headroom_tenant_requests_total"
SECONDS = "headroom_tenant_request_seconds_total"


def test_rows_are_counted_by_head_and_code_and_made_up_heads_get_no_label(triton):
    address = triton.server.address
    unknown = f"nobody-{secrets.token_hex(4)}"  # a valid name that is not loaded

    def reading():
        page = read_metrics(address.host, address.metrics_port)
        return {
            "ok": page.total(ROWS, head="smart_home", code="OK"),
            "blank": page.total(ROWS, head="smart_home", code="INVALID_ARG"),
            "not_found": page.total(ROWS, head=OTHER_HEAD, code="NOT_FOUND"),
            "requests": page.total(REQUESTS, head="smart_home"),
            "seconds": page.total(SECONDS, head="smart_home"),
            "unknown_labelled": any(s.labels.get("head") == unknown for s in page.samples),
        }

    with triton.client() as client:
        client.classify(["turn on the lights"], "smart_home")  # the head gets its label
        before = reading()
        answers = client.classify(["dim the lights", "play some jazz", "lock the door"], "smart_home")
        assert len(answers) == 3
        for text in ("hi", "hello"):  # one text per request: the client resends a failed request's rows alone
            assert isinstance(client.classify([text], unknown, return_errors=True)[0], HeadroomError)
        assert isinstance(client.classify(["  "], "smart_home", return_errors=True)[0], HeadroomError)

    # Triton folds the models' metric updates into its page asynchronously.
    after = wait_for(
        reading,
        timeout_s=10,
        message="the tenant counters did not count the requests",
        until=lambda r: r["ok"] >= before["ok"] + 3 and r["not_found"] >= before["not_found"] + 2,
    )
    assert after["ok"] - before["ok"] == 3  # one request of three texts
    assert after["not_found"] - before["not_found"] == 2
    assert after["blank"] - before["blank"] == 1
    assert after["requests"] - before["requests"] == 2  # the three texts, then the blank one
    assert after["seconds"] > before["seconds"]
    assert not after["unknown_labelled"], "a head that was never answered must not get a label of its own"
