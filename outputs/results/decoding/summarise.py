"""The dev figures that choose_on_dev.sh wrote, as a Markdown table, best val/bleu first:
``python outputs/results/decoding/summarise.py OUT``."""

import json
import sys
from pathlib import Path

rows = []
for metrics in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    figures = json.loads(metrics.read_text())["val"]
    rows.append((figures["val/bleu"], figures["val/bleu_lc"], metrics.parent.name))
print("| decoding | val/bleu (cased) | val/bleu_lc |\n| --- | --- | --- |")
for bleu, bleu_lc, name in sorted(rows, reverse=True):
    print(f"| {name} | {bleu:.2f} | {bleu_lc:.2f} |")
