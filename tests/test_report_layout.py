"""The HTML report as a reader sees it, in headless Chromium (Debian's `chromium`; skipped where it is not installed):
every table fits a 1,400 px window, the estimate banner appears once, notes are not drawn as alarms."""
import re, shutil, subprocess
from pathlib import Path
import pytest

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    from energytok.card import simulated_records
    from energytok.stats_describe import simulate_runs
    from energytok.report import compare_runs
    effects = {'dtype': {'fp32': 1.0, 'bf16': 0.8, 'fp16': 0.78}, 'batch_size': {1: 1.0, 8: 0.3, 32: 0.15, 64: 0.12}}
    recs = simulated_records(simulate_runs(effects, n_reps=8, seed=1))
    folder = tmp_path_factory.mktemp('report')
    compare_runs(recs, 'j_per_token', ['dtype', 'batch_size'], n_boot=200).save(folder)
    return folder


def chromium(tmp_path, *args) -> str:
    if CHROMIUM is None: pytest.skip('Chromium is not installed (Debian: apt-get install chromium)')
    p = subprocess.run([CHROMIUM, *FLAGS, f'--user-data-dir={tmp_path/"profile"}', *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_every_table_fits_a_1400_px_window(report, tmp_path):
    page = (report/'report.html').read_text()
    probe = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', '', page).replace(  # a copy that may run one script
        '</body>', '<script>addEventListener("load", () => document.documentElement.setAttribute("data-width", '
        'document.documentElement.scrollWidth + "/" + document.documentElement.clientWidth))</script></body>')
    (tmp_path/'probe.html').write_text(probe)
    dom = chromium(tmp_path, '--window-size=1400,1000', '--virtual-time-budget=5000', '--dump-dom', (tmp_path/'probe.html').as_uri())
    scroll, client = map(int, re.search(r'data-width="(\d+)/(\d+)"', dom).groups())
    assert scroll <= client, f'the page is {scroll} px wide in a {client} px window: a table overflows'
    chromium(tmp_path, '--window-size=1400,3000', f'--screenshot={tmp_path/"report.png"}', (report/'report.html').as_uri())
    assert (tmp_path/'report.png').read_bytes()[:4] == b'\x89PNG'


def test_one_estimate_banner_and_notes_drawn_as_notes(report):
    page = (report/'report.html').read_text()
    assert page.count('<blockquote class="warning">') == 1 and page.count('ESTIMATES, not measurements') == 1
    assert page.index('<blockquote class="warning">') < page.index('<h2>')  # at the top
    md = (report/'report.md').read_text()
    assert md.count('estimates, not measurements') + md.count('ESTIMATES, not measurements') == 1
