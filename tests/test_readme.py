"""Every python block of README.md runs as pasted, in order, in a fresh interpreter, and its links point somewhere."""
import re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT/'README.md').read_text()


def test_readme_python_blocks_run_in_order_in_a_fresh_interpreter(tmp_path):
    blocks = re.findall(r'```python\n(.*?)\n```', README, flags=re.S)
    assert len(blocks) >= 3
    script = tmp_path/'readme.py'
    script.write_text('\n\n'.join(blocks) + '\n')
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def test_readme_links_chapters_by_their_site_address():
    site = 'https://energytok.github.io/energytok/'
    assert site in README.split('\n## ')[0]  # the site is linked at the top
    links = re.findall(r'\]\(([^)]+)\)', README)
    relative = [l for l in links if not re.match(r'https?://', l)]
    assert not relative, relative
    pages = {re.sub(r'\.html$', '', l[len(site):]) for l in links if l.startswith(site) and l.endswith('.html')}
    chapters = {re.sub(r'^\d+_', '', p.stem) for p in (ROOT/'nbs').glob('*.ipynb')}
    assert pages and pages <= chapters, pages - chapters


def test_top_level_api_is_lazy_and_complete():
    code = ("import sys, energytok; heavy = {'torch', 'pandas', 'seaborn', 'statsmodels', 'scipy', 'matplotlib'}; "
            "assert not heavy & set(sys.modules), heavy & set(sys.modules); "
            "missing = [n for n in energytok.__all__ if not hasattr(energytok, n)]; assert not missing, missing; "
            "from energytok import Meter, from_measurement, energy_card, compare_runs, run_sweep; print('ok')")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == 'ok', p.stderr
