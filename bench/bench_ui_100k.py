"""The Dagster UI and the sensors at 100,000 control rows and partitions (headless Chromium).

Starts ``dataloader dev`` in its own home (shipped settings, the sensors running), adds
``--rows`` control rows (not due) beside the demo's three, lets master_sensor add the first
partitions and adds the rest straight to the instance (the sensor adds at most 1,000 a tick, so
100,000 would take 100 ticks), then times in Debian's headless Chromium
(``/usr/bin/chromium``, driven over the DevTools protocol):

- the asset page ``/assets/dataloader__table_load``;
- the partitions view ``?view=partitions`` (the partition list and its picker);
- the launch dialog's partition picker (the "Materialize..." button on the asset page).

A page counts as rendered when its text shows what only its loaded data puts there (the latest
materialization's partition; a partition key of the list; the picker's heading); each is timed ``--rounds`` times (the first is cold) and a screenshot of
the last round is kept under ``bench/.work/ui_100k/``. Then the sensors' tick durations are read
from the Dagster instance (the daemon's own ticks, start to end) for the ticks since the rows were
added. The machine is shared: read the figures with the load average printed beside them.

    .venv/bin/python bench/bench_ui_100k.py [--rows 100000] [--rounds 3] [--interval 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from bench_loads_per_hour import _free_port, _query, _start_dev, _stop_dev, _wait

WORK = ROOT / "bench" / ".work" / "ui_100k"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
PREFIX = "ui100k"
LOAD_ASSET = "dataloader__table_load"
ASSET_PAGE_TEXT = ("Latest materialization", "demo.")  # shown once its data arrived
PICKER_TEXT = ("Partition selection",)  # the launch dialog's partition picker


def _seed(home: Path, rows: int) -> None:
    """``rows`` control rows in one statement, not due for ten years (nothing loads)."""
    demo = _query(
        home, "SELECT db_config_value FROM table_control WHERE control_key = 'demo.orders'"
    )
    _query(
        home,
        "INSERT INTO table_control (control_key, source_catalog, source_schema_name,"
        " source_table_name, destination_catalog, destination_schema_name,"
        " destination_table_name, db_type, db_config_value, load_strategy,"
        " next_load_date_time, schedule_interval)"
        " SELECT %s || '.t' || lpad(g::text, 6, '0'), 'demo_source', 'shop', 't' || g,"
        " 'bench_lake', %s, 't' || g, 'postgresql', %s::jsonb, 'full',"
        " now() + interval '10 years', interval '1 day' FROM generate_series(1, %s) g"
        " RETURNING 1",
        (PREFIX, PREFIX, json.dumps(demo[0]["db_config_value"]), rows),
    )


def _add_partitions(dagster_home: Path, rows: int) -> int:
    """The rows' partitions, added straight to the instance (master_sensor adds at most 1,000 a
    tick: 100 ticks for 100,000 rows); how many were missing."""
    import dagster as dg

    from dagsters.partitions import PARTITIONS_NAME

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        have = set(instance.get_dynamic_partitions(PARTITIONS_NAME))
        missing = [k for g in range(1, rows + 1) if (k := f"{PREFIX}.t{g:06d}") not in have]
        for i in range(0, len(missing), 10_000):
            instance.add_dynamic_partitions(PARTITIONS_NAME, missing[i : i + 10_000])
        return len(missing)
    finally:
        instance.dispose()


def _partitions(dagster_home: Path) -> int:
    import dagster as dg

    from dagsters.partitions import PARTITIONS_NAME

    try:
        instance = dg.DagsterInstance.from_config(str(dagster_home))
    except Exception:  # noqa: BLE001 - dagster dev is still creating its storage: not yet
        return 0
    try:
        return len(instance.get_dynamic_partitions(PARTITIONS_NAME))
    finally:
        instance.dispose()


class Browser:
    """One headless Chromium and one page, over the DevTools protocol (websockets)."""

    def __init__(self, ws, profile: Path):
        self.ws, self.profile, self.next_id = ws, profile, 0
        self.inflight: dict[str, float] = {}  # GraphQL request id -> when it was sent
        self.last_activity = time.monotonic()
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
                continue
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Network.requestWillBeSent" and "graphql" in params["request"]["url"]:
                self.inflight[params["requestId"]] = time.monotonic()
                self.last_activity = time.monotonic()
            elif (
                method in ("Network.loadingFinished", "Network.loadingFailed")
                and params["requestId"] in self.inflight
            ):
                self.inflight.pop(params["requestId"], None)
                self.last_activity = time.monotonic()

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        return (await asyncio.wait_for(future, 120)).get("result", {})

    async def text(self) -> str:
        result = await self.call(
            "Runtime.evaluate", expression="document.body ? document.body.innerText : ''"
        )
        return result.get("result", {}).get("value") or ""

    async def settled(self, started: float, wanted: tuple[str, ...], timeout: float = 180) -> float:
        """Seconds from ``started`` until the page's text shows every ``wanted`` text (what only
        the loaded data puts there). The UI keeps polling GraphQL, so "no request in flight" never
        comes: the text is the measure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            text = await self.text()
            if all(w in text for w in wanted):
                return time.monotonic() - started
        await self.screenshot(WORK / "timeout.png")
        text = (await self.text())[:400]
        raise TimeoutError(
            f"page never showed {wanted} ({len(self.inflight)} GraphQL requests open; "
            f"screenshot {WORK / 'timeout.png'}); its text: {text!r}"
        )

    async def click(self, text: str) -> bool:
        """Click (real mouse events) the first visible button whose text starts with ``text``;
        False if there is none."""
        found = await self.call(
            "Runtime.evaluate",
            returnByValue=True,
            expression=(
                "(() => { const b = [...document.querySelectorAll('button')].find("
                f"x => x.innerText.trim().startsWith({json.dumps(text)}) && x.offsetParent); "
                "if (!b) return null; const r = b.getBoundingClientRect(); "
                "return [r.x + r.width / 2, r.y + r.height / 2] })()"
            ),
        )
        where = found.get("result", {}).get("value")
        if not where:
            return False
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=where[0],
                y=where[1],
                button="left",
                clickCount=1,
            )
        return True

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


def _start_chromium(port: int, profile: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _page_ws(port: int) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [p for p in json.load(r) if p.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("chromium did not open its DevTools endpoint")


async def _time_pages(base: str, port: int, rounds: int) -> dict[str, list[float]]:
    import websockets

    times: dict[str, list[float]] = {"asset page": [], "partitions view": [], "launch picker": []}
    async with websockets.connect(_page_ws(port), max_size=None) as ws:
        browser = Browser(ws, WORK)
        await browser.call("Network.enable")
        await browser.call("Page.enable")
        await browser.call("Runtime.enable")
        asset_url = f"{base}/assets/{LOAD_ASSET}"
        for index in range(rounds):
            last = index == rounds - 1
            started = time.monotonic()
            await browser.call("Page.navigate", url=asset_url)
            times["asset page"].append(await browser.settled(started, ASSET_PAGE_TEXT))
            await browser.click("Skip")  # the first visit's "Join the Dagster community" dialog
            if last:
                await browser.screenshot(WORK / "asset_page.png")
            started = time.monotonic()
            await browser.call("Page.navigate", url=f"{asset_url}?view=partitions")
            times["partitions view"].append(await browser.settled(started, (f"{PREFIX}.t000001",)))
            if last:
                await browser.screenshot(WORK / "partitions_view.png")
            await browser.call("Page.navigate", url=asset_url)
            await browser.settled(time.monotonic(), (LOAD_ASSET,))
            started = time.monotonic()
            if not await browser.click("Materialize"):
                raise RuntimeError("no Materialize button on the asset page")
            try:  # best effort: in headless Chromium the click has not always opened it
                times["launch picker"].append(await browser.settled(started, PICKER_TEXT, 60))
            except TimeoutError as exc:
                print(f"  launch dialog not measured: {str(exc)[:160]}")
                continue
            if last:
                await browser.screenshot(WORK / "launch_picker.png")
        browser.reader.cancel()
    return times


def _tick_durations(dagster_home: Path, since: float) -> dict[str, list[float]]:
    """Seconds per daemon tick (start to end) of each sensor since ``since``."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    out: dict[str, list[float]] = {}
    try:
        for state in instance.all_instigator_state():
            if getattr(state.instigator_type, "value", None) != "SENSOR":
                continue
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=200)
            for tick in ticks:
                if tick.timestamp < since or tick.end_timestamp is None:
                    continue
                out.setdefault(state.instigator_name, []).append(
                    tick.end_timestamp - tick.timestamp
                )
    finally:
        instance.dispose()
    return out


def _summary(values: list[float]) -> str:
    values = sorted(values)
    return (
        f"median {statistics.median(values):6.2f} s, min {values[0]:6.2f}, "
        f"max {values[-1]:6.2f} ({len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=int, default=30, help="master_sensor interval")
    parser.add_argument("--ticks-seconds", type=int, default=180, help="watch sensors this long")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    home = WORK / "home"
    home.mkdir()
    dev_args = argparse.Namespace(
        interval=args.interval, batch=10, source_concurrency=2, max_concurrent_runs=10
    )
    process, log = _start_dev(home, dev_args)
    chromium = None
    try:
        demo = "SELECT count(*) AS n FROM table_control WHERE control_key LIKE 'demo.%%'"
        _wait(lambda: (_query(home, demo) or [{"n": 0}])[0]["n"] == 3, "the demo", process, log)
        port = int(re.findall(r"Dagster UI: http://[^:]+:(\d+)", log.read_text())[0])
        started = time.monotonic()
        _seed(home, args.rows)
        seeded_at = time.time()
        print(f"{args.rows:,} control rows added in {time.monotonic() - started:.1f} s")
        want = args.rows + 3
        _wait(lambda: _partitions(home / "dagster_home") > 3, "the first tick", process, log)
        added = _add_partitions(home / "dagster_home", args.rows)
        print(f"{added:,} partitions added to the instance (master_sensor adds 1,000 a tick)")
        _wait(lambda: _partitions(home / "dagster_home") >= want, "the partitions", process, log)
        print(
            f"{want:,} partitions {time.time() - seeded_at:.0f} s after the rows "
            f"(master_sensor every {args.interval} s)"
        )
        cdp_port = _free_port()
        profile = Path(tempfile.mkdtemp(prefix="bench-ui-chromium-"))
        chromium = _start_chromium(cdp_port, profile)
        times = asyncio.run(_time_pages(f"http://127.0.0.1:{port}", cdp_port, args.rounds))
        for name, values in times.items():
            if not values:
                print(f"  {name:16s} not measured")
                continue
            print(f"  {name:16s} first {values[0]:6.2f} s, then {_summary(values[1:] or values)}")
        remaining = args.ticks_seconds - (time.time() - seeded_at)
        if remaining > 0:
            time.sleep(remaining)
        print(f"sensor ticks since the rows were added (load average {os.getloadavg()[0]:.1f}):")
        for name, values in sorted(_tick_durations(home / "dagster_home", seeded_at).items()):
            print(f"  {name:36s} {_summary(values)}")
        print(f"screenshots: {WORK}")
    finally:
        if chromium is not None:
            chromium.terminate()
            chromium.wait(timeout=30)
        _stop_dev(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
