"""Steady HTTP load through a proxy, the way a well-behaved client application sends it.

The client is urllib3 (the HTTP library under `requests`, pip and most Python tooling):
kept-alive connections from a pool, and its standard retry rule: an idempotent request
(GET here) is sent again when its connection fails before a response arrives, for example
a kept-alive connection the server closed just as the request went out (RFC 9112 9.3.1).
A failure once response bytes have arrived is not retried: the body is read outside
urllib3's retry (`preload_content=False`), so a cut download counts as a failure.

Usage: steady_load.py PROXY URL SOURCE RATE SECONDS WORKERS
Prints one JSON object: counts, the first errors, and (epoch seconds, Via) per response.
"""

import json
import sys
import threading
import time

import urllib3
from urllib3.util import Retry

proxy, url, source = sys.argv[1], sys.argv[2], sys.argv[3]
rate, seconds, workers = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])

lock = threading.Lock()
report = {"ok": 0, "failed": 0, "retried": 0, "errors": [], "served": []}
start = time.time()
end = start + seconds


def worker(index):
    pool = urllib3.ProxyManager(
        proxy,
        maxsize=1,
        source_address=(source, 0),
        retries=Retry(total=3, connect=3, read=3, status=0, redirect=0, backoff_factor=0),
        timeout=urllib3.Timeout(connect=3.0, read=5.0),
    )
    interval = workers / rate
    due = start + index * interval / workers
    while due < end:
        now = time.time()
        if due > now:
            time.sleep(due - now)
        due += interval
        try:
            response = pool.request("GET", url, preload_content=False)
            body = response.read()
            via = response.headers.get("Via", "")
            retried = bool(response.retries and response.retries.history)
            response.release_conn()
            good = response.status == 200 and len(body) > 0
            with lock:
                report["ok" if good else "failed"] += 1
                report["retried"] += retried
                report["served"].append([time.time(), via])
                if not good and len(report["errors"]) < 10:
                    report["errors"].append(f"status {response.status}")
        except Exception as error:  # every failure is counted, whatever its kind
            with lock:
                report["failed"] += 1
                if len(report["errors"]) < 10:
                    report["errors"].append(f"{time.time() - start:.3f}s {error!r}")


threads = [threading.Thread(target=worker, args=(index,)) for index in range(workers)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
report["start"] = start
print(json.dumps(report))
