"""Reading a stack dump back in tests, independently of the Inspector's own reader: header and the
main thread's frames, parsed from faulthandler's text format."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_HEADER = re.compile(r"^# (\w+): ?(.*)$")
_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+) .*\(most recent call first\):$")
_FRAME = re.compile(r'^  File "(.+)", line (\d+) in (.+)$')


@dataclass
class Dump:
    """A parsed dump: header values (strings) and each thread's frames (file, line, function), innermost first."""

    header: dict[str, str] = field(default_factory=dict)
    threads: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)

    @property
    def main(self) -> list[tuple[str, int, str]]:
        """The main thread's frames."""
        return self.threads[self.header["main_thread"]]


def parse_dump(path: Path) -> Dump:
    """Parse a `stacks-NNNN.txt` file."""
    dump = Dump()
    current: list[tuple[str, int, str]] | None = None
    for line in path.read_text().splitlines():
        if (m := _HEADER.match(line)) and not dump.threads:
            dump.header[m.group(1)] = m.group(2)
        elif m := _THREAD.match(line):
            current = dump.threads.setdefault(m.group(1), [])
        elif (m := _FRAME.match(line)) and current is not None:
            current.append((m.group(1), int(m.group(2)), m.group(3)))
    return dump
