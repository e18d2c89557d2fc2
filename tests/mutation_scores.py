"""The score of `make mutation` per part: of the mutants mutmut made in each part, the share the fast tests killed.

Reads mutmut's results (mutants/**/*.py.meta), leaves out the mutants tests/equivalent_mutants.md lists as equivalent
(each with its reason: the mutant computes the same thing), and prints one line per part, then every surviving
mutant not on that list (`mutmut show <name>` shows its diff). Exit 1 when a part is below its target.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# part: (the files it holds, relative to src/softmax_lab, the share of mutants to kill)
PARTS = {"maths": ("maths/", 0.90), "data": ("data/", 0.90), "steps": ("steps/", 0.80),
         "flags": ("trainer/flags.py", 0.80)}
KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # test failed, pytest error, timeout, type check (mutmut's stats.py)


def equivalent_mutants(path: Path = ROOT / "tests" / "equivalent_mutants.md") -> dict[str, str]:
    """{mutant name: why it is equivalent} from the list's lines `- `name`: reason`."""
    found = re.findall(r"^- `([^`]+)`: (.+)$", path.read_text(), flags=re.M) if path.exists() else []
    return dict(found)


def results(mutants: Path = ROOT / "mutants" / "src" / "softmax_lab") -> dict[str, int | None]:
    """{mutant name: mutmut's exit code} for every mutant of every file."""
    out = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        out.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
    return out


def part_of(mutant: str) -> str | None:
    """'softmax_lab.maths.losses.xǁHuberǁgrad__mutmut_3' -> 'maths'; None outside the parts scored."""
    module = mutant.split(".x")[0].split("__mutmut")[0]
    path = module.replace("softmax_lab.", "", 1).replace(".", "/")
    return next((part for part, (prefix, _) in PARTS.items()
                 if path.startswith(prefix.removesuffix(".py")) and (prefix.endswith("/") or path.count("/") == 1)),
                None)


def main() -> int:
    codes, equivalent = results(), equivalent_mutants()
    if not codes:
        print("no mutmut results in mutants/: run `make mutation`")
        return 1
    below, survivors = [], []
    for part, (_, target) in PARTS.items():
        mine = {k: v for k, v in codes.items() if part_of(k) == part and k not in equivalent}
        killed = sum(v in KILLED for v in mine.values())
        unchecked = sum(v is None for v in mine.values())  # a run stopped before its end: they count as not killed
        score = killed / len(mine) if mine else 0.0
        survivors += sorted(k for k, v in mine.items() if v is not None and v not in KILLED)
        listed = sum(part_of(k) == part for k in equivalent)
        note = f"{listed} equivalent left out"
        if unchecked:
            note += (f"; {unchecked} not checked, the run did not finish: "
                     f"{100 * killed / max(len(mine) - unchecked, 1):.1f}% of those checked")
        # the part's score is the line's last percentage
        print(f"{part} (target {100 * target:.0f}%): {killed} of {len(mine)} mutants killed ({note}): "
              f"{100 * score:.1f}%")
        if score < target:
            below.append(part)
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (mutmut show NAME):")
        print("\n".join(f"  {name}  [{codes[name]}]" for name in survivors))
    stale = sorted(set(equivalent) - set(codes))
    if stale:
        print(f"\ntests/equivalent_mutants.md lists {len(stale)} mutants mutmut no longer makes: "
              f"{', '.join(stale[:5])}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
