"""The interactive lab's terminal: a ``lab>`` prompt with Tab completion and history (GNU
readline) when stdin is a terminal, plain line reading otherwise (so commands can be piped in),
and timeline entries printed above the prompt instead of through what is being typed.

The prompt runs in a thread of its own (readline blocks) and asks for the next line only once
the lab has carried out the last one, so a command's answer is printed before the next prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

PROMPT = "lab> "
HISTORY_LENGTH = 1000
_CLEAR_LINE = "\r\x1b[K"


class Console:
    def __init__(
        self,
        *,
        history: Path | None,
        complete: Callable[[str], list[str]] = lambda line: [],
        out: TextIO | None = None,
        interactive: bool | None = None,
    ) -> None:
        self._out = out or sys.stdout
        self.complete = complete  # the line before the cursor -> what may follow
        self._history = history
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self._readline: Any = None
        self._prompting = False
        self._lock = threading.Lock()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._want = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._reader: asyncio.StreamReader | None = None
        self._terminal: Any = None

    # -- output ----------------------------------------------------------------------------
    def print(self, text: str) -> None:
        """Print ``text`` (one or more lines); at a prompt, above it, with what was typed kept."""
        with self._lock:
            if self._prompting and self._readline is not None:
                typed = self._readline.get_line_buffer()
                self._out.write(f"{_CLEAR_LINE}{text}\n{PROMPT}{typed}")
            else:
                self._out.write(f"{text}\n")
            self._out.flush()

    # -- input -----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.interactive:
            self._setup_readline()
            self._thread = threading.Thread(
                target=self._prompt_loop, args=(loop,), name="lab-prompt", daemon=True
            )
            self._thread.start()
            return
        reader = self._reader = asyncio.StreamReader()
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        except (ValueError, OSError):
            reader.feed_eof()  # no stdin at all (e.g. closed): nothing to read

    async def read(self) -> str | None:
        """The next line (without its newline), or None at the end of input."""
        if self._reader is not None:
            raw = await self._reader.readline()
            return raw.decode(errors="replace").rstrip("\r\n") if raw else None
        self._want.set()
        return await self._lines.get()

    def close(self) -> None:
        self._closing = True
        self._want.set()
        if self._readline is not None and self._history is not None:
            with contextlib.suppress(OSError):
                self._readline.write_history_file(str(self._history))
        if self._terminal is not None:
            # Leaving while readline waits for a line: give the shell its terminal back.
            import termios

            with contextlib.suppress(termios.error, OSError, ValueError):
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._terminal)
            if self._prompting:
                self._out.write("\n")
                self._out.flush()

    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # a Python without it: a prompt all the same, no completion
            return
        import termios

        with contextlib.suppress(termios.error, OSError, ValueError):
            self._terminal = termios.tcgetattr(sys.stdin.fileno())
        self._readline = readline
        readline.set_completer_delims(" ")
        readline.set_completer(self._completer)
        # libedit (macOS) and GNU readline spell the binding differently.
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        readline.set_history_length(HISTORY_LENGTH)
        if self._history is not None:
            with contextlib.suppress(OSError):
                readline.read_history_file(str(self._history))

    def _completer(self, text: str, state: int) -> str | None:
        buffer = self._readline.get_line_buffer()[: self._readline.get_endidx()]
        try:
            matches = self.complete(buffer)
        except Exception:  # a completer that raises is silently disabled by readline
            return None
        return f"{matches[state]} " if state < len(matches) else None

    def _prompt_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            self._want.wait()
            self._want.clear()
            if self._closing:
                return
            with self._lock:
                self._prompting = True
            try:
                line: str | None = input(PROMPT)
            except EOFError:
                line = None
            except KeyboardInterrupt:
                line = "quit"
            finally:
                with self._lock:
                    self._prompting = False
            loop.call_soon_threadsafe(self._lines.put_nowait, line)
            if line is None:
                return
