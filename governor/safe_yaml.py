"""Read one YAML configuration file as hostile input.

A configuration file is parsed only when it is a regular file of at most MAX_BYTES, valid UTF-8,
and a YAML document without duplicate keys, without an alias that refers to itself, and without
aliases that expand to more than MAX_NODES values (the "billion laughs"). Anything else raises
YamlProblem with the reason, so the caller can name the file and exit 2 (or, on a reload, keep the
running configuration) instead of crashing, hanging on a FIFO, or silently taking the last of two
keys.
"""
from __future__ import annotations

import os
import stat
from typing import Any, Dict, List, Set

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000


class YamlProblem(Exception):
    """Why a file cannot be used as configuration (without the file name)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses recursive aliases and duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._composing: List[str] = []   # anchors whose node is being composed right now

    def compose_node(self, parent: Any, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            if event.anchor in self._composing:
                raise ComposerError(None, None, f"alias *{event.anchor} refers to the node that contains it",
                                    event.start_mark)
            return super().compose_node(parent, index)
        anchor = getattr(self.peek_event(), "anchor", None)
        if anchor is not None:
            self._composing.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            if anchor is not None:
                self._composing.pop()

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> Dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: Set[Any] = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:   # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"key {key!r} appears twice (which one was meant?)", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Node, memo: Dict[int, int]) -> int:
    """How many values the document holds once every alias is expanded, memoized per node so
    that this count itself stays cheap."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = MAX_NODES + 1    # provisional: a cycle (already refused) cannot loop here
    size = 1
    if isinstance(node, SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
            if size > MAX_NODES:
                break
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo) + _expanded_size(value, memo)
            if size > MAX_NODES:
                break
    memo[id(node)] = size
    return size


def read_bytes(path: str) -> bytes:
    """The file's bytes, refusing what is not a regular file (a FIFO would block for ever) or is
    larger than MAX_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise YamlProblem(f"cannot read: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise YamlProblem("not a regular file")
        if info.st_size > MAX_BYTES:
            raise YamlProblem(f"larger than {MAX_BYTES // 1024} kB; that is not a configuration file")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_BYTES:
                raise YamlProblem(f"larger than {MAX_BYTES // 1024} kB; that is not a configuration file")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise YamlProblem(f"cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlProblem(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line}, column {column}); "
                          "save the file as UTF-8") from exc


def loads(text: str) -> Any:
    """Parse one YAML document with the rules above."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise YamlProblem(f"aliases expand to more than {MAX_NODES} values; refusing to expand them")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise YamlProblem(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    except RecursionError as exc:
        raise YamlProblem("nested too deeply") from exc
    finally:
        loader.dispose()


def load_file(path: str) -> Any:
    return loads(decode(read_bytes(path)))
