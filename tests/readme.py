"""Render README.md from nbs/index.ipynb where Quarto is absent (`nbdev-readme` needs Quarto).

`python tests/readme.py` writes README.md; `--check` exits 1 if README.md is not what the notebook renders to.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_directive = re.compile(r'^\s*#\s*\|')


def _cell_text(cell) -> str:
    src = cell['source']
    return ''.join(src) if isinstance(src, list) else src


def _output_md(out) -> str:
    data = out.get('data', {})
    if out.get('output_type') == 'stream': return '```\n' + ''.join(out['text']).rstrip() + '\n```'
    if 'text/markdown' in data: return ''.join(data['text/markdown']).strip()
    if 'text/plain' in data: return '```\n' + ''.join(data['text/plain']).rstrip() + '\n```'
    return ''


def render(nb_path: Path) -> str:
    "GitHub-flavoured markdown of a notebook: markdown cells, visible code cells and their outputs."
    nb = json.loads(nb_path.read_text())
    parts = []
    for cell in nb['cells']:
        text = _cell_text(cell)
        if cell['cell_type'] == 'markdown':
            parts.append(text.strip())
            continue
        lines = text.splitlines()
        if any(_directive.match(l) and re.search(r'\b(hide|exporti?|default_exp)\b', l) for l in lines): continue
        code = '\n'.join(l for l in lines if not _directive.match(l)).strip()
        if code: parts.append(f'```python\n{code}\n```')
        parts.extend(o for o in map(_output_md, cell.get('outputs', [])) if o)
    return '\n\n'.join(p for p in parts if p) + '\n'


def main() -> int:
    text = render(ROOT / 'nbs' / 'index.ipynb')
    readme = ROOT / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            print('README.md is not what nbs/index.ipynb renders to; run python tests/readme.py and commit it', file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
