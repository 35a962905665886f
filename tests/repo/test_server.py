"""Step modules imported by a test (harness.server.step_modules) leave nothing to its servers.

Step 06's gunicorn_conf.py makes a metrics directory when imported and names
it in PROMETHEUS_MULTIPROC_DIR. A test process that imports it must neither
keep that directory nor hand it to the servers it starts: each server makes
its own, which must be empty when it starts.
"""

import os
from pathlib import Path

from harness.server import AUTH, METRICS_DIR, loopback_client, start_server, step_modules
from harness.steps import find

METRICS_STEP = find("06").path


def test_the_config_s_metrics_directory_goes_with_the_import():
    before = os.environ.get(METRICS_DIR)
    with step_modules(METRICS_STEP) as load:
        load("gunicorn_conf")
        made = Path(os.environ[METRICS_DIR])
        assert made.is_dir()
    assert os.environ.get(METRICS_DIR) == before
    assert not made.exists(), f"{made} is left behind"


def test_a_server_started_meanwhile_keeps_its_metrics_apart(tmp_path):
    with step_modules(METRICS_STEP) as load:
        load("gunicorn_conf")
        ours = Path(os.environ[METRICS_DIR])
        with start_server(METRICS_STEP, env={"DIRTY_WORKERS": "1"}, log_dir=tmp_path) as server:
            with loopback_client(server.base_url, timeout=30, headers=AUTH) as http:
                assert http.post("/chat/sync", json={"prompt": "hello"}).status_code == 200
                assert "chat_http_requests_total" in http.get("/metrics").text
        assert list(ours.iterdir()) == [], "the server wrote its metrics into the test process's directory"
