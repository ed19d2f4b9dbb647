"""Small operator and client mistakes get a plain answer: a taken port, a gzip body without its header,
an envelope id from the wrong API.
"""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys

from cohort.core.telemetry_batch import ACCEPTED_IDS
from support import envelope, free_port


def test_serve_on_a_taken_port_says_so_and_never_claims_to_serve(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cohort.cli", "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "serving" not in result.stdout, result.stdout
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_serve_on_an_address_it_cannot_bind_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cohort.cli", "serve", "--data-dir", str(tmp_path / "data"), "--host", "192.0.2.1",
         "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "serving" not in result.stdout and "Traceback" not in result.stderr
    assert "192.0.2.1" in result.stderr and "cannot" in result.stderr, result.stderr


def test_a_gzip_body_without_content_encoding_gets_a_hint(shared_client):
    body = gzip.compress(envelope([{"eid": "START"}]))
    response = shared_client.post("/v1/telemetry", content=body)
    assert response.status_code == 400
    params = response.json()["params"]
    assert params["err"] == "ERR_MALFORMED_JSON"
    assert "gzip" in params["errmsg"] and "Content-Encoding: gzip" in params["errmsg"]
    assert "surrogate" not in params["errmsg"] and "UTF-8" not in params["errmsg"]


def test_a_wrong_envelope_id_error_names_every_accepted_id(shared_client):
    response = shared_client.post("/v1/telemetry", content=b'{"id": "api.sunbird.content", "events": [{}]}')
    assert response.status_code == 400
    message = response.json()["params"]["errmsg"]
    assert response.json()["params"]["err"] == "ERR_ENVELOPE"
    assert all(f"'{accepted}'" in message for accepted in ACCEPTED_IDS), message
    assert "api.sunbird.content" in message
