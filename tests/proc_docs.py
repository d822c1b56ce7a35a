"""The docs build up to Quarto's step: nbdev's notebook processing, as `nbdev-docs` runs it before rendering."""
import sys
from pathlib import Path

import nbdev.doclinks
from nbdev.config import get_config
from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
from nbdev.serve import proc_nbs


def main() -> int:
    cfg = get_config()
    nbs = cfg.path('nbs_path')
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    nbdev_sidebar.__wrapped__(path=nbs)
    cache = proc_nbs(nbs, n_workers=0)
    wanted = sorted(p.relative_to(nbs) for p in nbs.rglob('*.ipynb') if not any(s.startswith(('.', '_')) for s in p.parts))
    missing = [str(p) for p in wanted if not (cache / p).exists()]
    if missing:
        print(f"docs processing did not produce: {missing}", file=sys.stderr)
        return 1
    print(f"processed {len(wanted)} notebooks into {cache}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
