"""A file to put on a machine at first boot, and how it becomes a cloud-init ``write_files`` entry.

The builders (hardening, node agent, kubeadm) describe files; only :mod:`userdata` turns them into
cloud-config. A secret file's ``repr`` never shows its content.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass
from typing import Any

# Above this size a file is gzipped: EC2 refuses user data over 16 KiB.
_COMPRESS_ABOVE = 2048


@dataclass(frozen=True)
class MachineFile:
    path: str
    content: bytes
    mode: str = "0644"
    owner: str = "root:root"
    secret: bool = False

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"machine file path must be absolute: {self.path!r}")
        if len(self.mode) != 4 or not self.mode.startswith("0"):
            raise ValueError(f"machine file mode must look like '0644': {self.mode!r}")

    def __repr__(self) -> str:
        shown = "<secret>" if self.secret else f"{len(self.content)} bytes"
        return f"MachineFile({self.path!r}, mode={self.mode}, {shown})"

    def write_files_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path, "owner": self.owner, "permissions": self.mode}
        text: str | None
        try:
            text = self.content.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if len(self.content) > _COMPRESS_ABOVE:
            # mtime=0: the same input renders the same user data, so plans stay stable.
            packed = gzip.compress(self.content, mtime=0)
            entry["encoding"] = "gz+b64"
            entry["content"] = base64.b64encode(packed).decode()
        elif text is None:
            entry["encoding"] = "b64"
            entry["content"] = base64.b64encode(self.content).decode()
        else:
            entry["content"] = text
        return entry
