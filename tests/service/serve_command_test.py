"""`rs-hashing serve` end to end: the real command in its own process on a loopback port
answers the page, a typed query and its health, and stops cleanly; bad flags are
one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests import testing

START_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def test_the_serve_command_answers_on_loopback_and_stops(folder_archive, tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+", encoding="utf-8")  # pylint: disable=consider-using-with
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    server = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "train.serve", f"--run_dir={folder_archive.model.run_dir}",
         f"--index={folder_archive.path}", f"--port={port}", "--noaccess_log", "--max_k=15"],
        cwd=testing.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                status, body = _get(base + "/api/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, \
                    open(tmp_path / "serve.log", encoding="utf-8").read()[-3000:]
                time.sleep(0.2)
        health = json.loads(body)
        assert status == 200 and health["index"]["count"] == 12 and health["limits"]["max_k"] == 15
        assert health["run"]["weights"] == folder_archive.model.fingerprint()
        status, body = _get(base + "/api/search?text=two+planes+on+the+airport&k=3")
        hits = json.loads(body)["hits"]
        assert status == 200 and [hit["rank"] for hit in hits] == [1, 2, 3]
        assert b"search.js" in _get(base + "/")[1]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    log.seek(0)
    output = log.read()
    log.close()
    assert server.returncode == 0, output[-3000:]
    assert f"page at http://127.0.0.1:{port}/" in output


def test_a_missing_run_is_a_one_line_error():
    result = testing.run_module("train.serve", "--run_dir=/nowhere/run", "--index=/nowhere/a.index")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: /nowhere/run: run folder does not exist"]
