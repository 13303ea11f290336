"""Print one closing line for several pytest JUnit reports: 'N passed, N failed, N skipped'.

Exit status 1 when any test failed or errored, or when no test ran at all.
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def main(paths: list[str]) -> int:
    """Sum the reports in `paths` and print the total."""
    tests = failures = errors = skipped = 0
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for suite in root.iter("testsuite"):
            tests += int(suite.get("tests", 0))
            failures += int(suite.get("failures", 0))
            errors += int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    passed = tests - failures - errors - skipped
    print(f"total: {passed} passed, {failures + errors} failed, {skipped} skipped")
    return 1 if failures or errors or tests == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
