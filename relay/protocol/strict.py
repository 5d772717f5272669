"""The strict msgpack subset every relay wire structure uses (DESIGN §4).

Pure: bytes in, values out.

Invariants:
- strict_unpack returns exactly one object or raises MalformedError: no
  trailing bytes; map keys are str (or bin, for the batch result's `results`)
  and never repeated; str is valid UTF-8, bin is the bin family; ints in
  0..2^63-1; no float, nil, bool or ext; containers nest at most MAX_DEPTH.
- The work a hostile document can cause is bounded before it is built: an
  array or map holds at most MAX_ELEMENTS elements, and one document at most
  MAX_OBJECTS objects inside its containers (counted as each container is
  completed), so a 16 MiB body of nils is refused after a few hundred
  kilobytes of it, not after sixteen million objects.
- The field readers (fields, str_field, bin_field, int_field, str_array, signed_pair)
  raise MalformedError naming the structure and the key; error details quote
  hostile values through show, so they stay short.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import msgpack

from relay.errors import MalformedError

MAX_INT = 2**63 - 1
MAX_DEPTH = 32
MAX_ELEMENTS = 10_000  # per array or map: a batch holds at most 10,000 items
MAX_OBJECTS = 320_000  # per document, inside its containers
SIGNATURE_SIZE = 64

# --- strict msgpack ---------------------------------------------------------


class _RepeatedKey(MalformedError):
    """Raised from inside the unpacker; strict_unpack re-raises it with `what` in front."""

    def __init__(self, key: str | bytes) -> None:
        super().__init__(f"map key {show(key)} is repeated")


class _Refused(MalformedError):
    """A value the strict subset refuses; `path` is filled in on the way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


class _TooMany(MalformedError):
    """Raised from inside the unpacker once a document passes MAX_OBJECTS."""

    def __init__(self) -> None:
        super().__init__(f"more than {MAX_OBJECTS} objects in one document")


def _pairs_to_dict(pairs: list[tuple[str | bytes, object]]) -> dict[str | bytes, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str | bytes] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return d


def value_kind(value: object) -> str:
    """The msgpack-level name of a decoded value, for error sentences."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    names = {str: "str", bytes: "bin", int: "int", float: "float", list: "array", dict: "map"}
    return names.get(type(value), "ext")


def _walk(value: object, depth: int) -> None:
    if type(value) is str or type(value) is bytes:
        return
    if type(value) is int:
        if value < 0 or value > MAX_INT:
            raise _Refused(f"int {value} is outside 0..2^63-1")
        return
    if type(value) is list:
        if depth >= MAX_DEPTH:
            raise _Refused(f"containers nested deeper than {MAX_DEPTH}")
        for i, item in enumerate(value):
            kind = type(item)  # the common leaves checked here, without a call each
            if kind is str or kind is bytes or (kind is int and 0 <= item <= MAX_INT):
                continue
            try:
                _walk(item, depth + 1)
            except _Refused as e:
                e.path.append(f"[{i}]")
                raise
        return
    if type(value) is dict:
        if depth >= MAX_DEPTH:
            raise _Refused(f"containers nested deeper than {MAX_DEPTH}")
        for key, item in value.items():
            kind = type(item)
            if kind is str or kind is bytes or (kind is int and 0 <= item <= MAX_INT):
                continue
            try:
                _walk(item, depth + 1)
            except _Refused as e:
                e.path.append(f".{key[:64]}" if type(key) is str else f"[{show(key)}]")
                raise
        return
    raise _Refused(f"{value_kind(value)} is not allowed")


def strict_unpack(data: bytes, what: str) -> object:
    """Decode exactly one msgpack object of the strict subset, or raise MalformedError.

    Maps come back as dicts keyed by str or bytes, arrays as lists, str as str,
    bin as bytes, ints as int. `what` starts every error sentence.
    """
    if len(data) <= MAX_OBJECTS:
        # Every object takes at least one byte, so MAX_OBJECTS cannot be passed:
        # no count is kept (a header, a receipt: most documents).
        return _unpack(data, what, None, _pairs_to_dict)
    left = MAX_OBJECTS

    def array(items: list[object]) -> list[object]:
        nonlocal left
        left -= len(items)
        if left < 0:
            raise _TooMany
        return items

    def table(pairs: list[tuple[str | bytes, object]]) -> dict[str | bytes, object]:
        nonlocal left
        left -= 2 * len(pairs)
        if left < 0:
            raise _TooMany
        return _pairs_to_dict(pairs)

    return _unpack(data, what, array, table)


def _unpack(
    data: bytes,
    what: str,
    array: Callable[[list[object]], list[object]] | None,
    table: Callable[[list[tuple[str | bytes, object]]], dict[str | bytes, object]],
) -> object:
    try:
        value: object = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            list_hook=array,
            object_pairs_hook=table,
            max_array_len=MAX_ELEMENTS,
            max_map_len=MAX_ELEMENTS,
        )
    except msgpack.ExtraData:
        raise MalformedError(f"{what}: trailing bytes after the msgpack object") from None
    except msgpack.StackError:
        raise MalformedError(f"{what}: containers nested too deep") from None
    except msgpack.FormatError:
        raise MalformedError(f"{what}: reserved msgpack type byte") from None
    except UnicodeDecodeError:
        raise MalformedError(f"{what}: a str is not valid UTF-8") from None
    except (_RepeatedKey, _TooMany) as e:
        raise MalformedError(f"{what}: {e.detail}") from None
    except ValueError as e:
        reason = str(e)
        if "incomplete input" in reason:
            reason = "truncated: the data ends inside an object"
        elif "exceeds max_" in reason and reason.split()[0].isdigit():
            count = int(reason.split()[0])
            if count > len(data) or not ("_array_" in reason or "_map_" in reason):
                reason = "a declared length runs past the end of the data"
            else:
                reason = f"an array or map declares {count} elements; at most {MAX_ELEMENTS}"
        elif "exceeds max_" in reason:
            reason = "a declared length runs past the end of the data"
        elif "not allowed for map key" in reason:
            reason = "a map key is not a str"
        raise MalformedError(f"{what}: not strict msgpack: {reason}") from None
    try:
        _walk(value, 0)
    except _Refused as e:
        where = "".join(reversed(e.path)) or "top level"
        raise MalformedError(f"{what}: {e.reason} (at {where})") from None
    return value


class _Packers(threading.local):
    """One msgpack Packer per thread: building one costs about as much as
    packing a small map, and a Packer is not safe to share between threads."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)


_PACKERS = _Packers()


def pack(obj: object) -> bytes:
    """Encode with the str/bin distinction kept (msgpack spec 2.0).

    An int outside msgpack's range is a MalformedError, like any other value
    the decoders would refuse (e.g. a client's absurd ttl). The thread's
    Packer resets its buffer after every call, also one that raised, so no
    half-packed value leaks into the next.
    """
    try:
        data: bytes = _PACKERS.packer.pack(obj)
    except OverflowError:
        raise MalformedError("an integer is outside the range msgpack can carry") from None
    return data


# --- field access -----------------------------------------------------------


def show(value: object, limit: int = 64) -> str:
    """repr() cut short, so hostile input cannot blow up an error detail."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def fields(
    value: object, what: str, keys: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, object]:
    """`value` as a map with every one of `keys` and any of `optional`, nothing else;
    MalformedError naming an unknown or missing key.

    `optional` is for the extensions a structure may carry (a header's `seal`,
    a certificate's `seal_keys`, a batch result's `delivered`).
    """
    if type(value) is not dict:
        raise MalformedError(f"{what}: expected a map, got {value_kind(value)}")
    present = value.keys()
    if present != keys and not (optional and keys <= present and present - keys <= optional):
        unknown = [show(k) for k in value if k not in keys and k not in optional]
        if unknown:
            raise MalformedError(f"{what}: unknown key {', '.join(sorted(unknown))}")
        missing = sorted(k for k in keys if k not in value)
        raise MalformedError(f"{what}: missing key {', '.join(missing)}")
    return value


def wrong_type(what: str, key: str, expected: str, value: object) -> MalformedError:
    """The error for a `value` at `key` of `what` that is not of the wire type `expected`."""
    return MalformedError(f"{what}: {key}: expected {expected}, got {value_kind(value)}")


def str_field(m: dict[str, object], key: str, what: str) -> str:
    """m[key] if it is a str; MalformedError otherwise."""
    value = m[key]
    if type(value) is not str:
        raise wrong_type(what, key, "str", value)
    return value


def bin_field(m: dict[str, object], key: str, what: str, size: int) -> bytes:
    """m[key] if it is a bin of exactly `size` bytes; MalformedError otherwise."""
    value = m[key]
    if type(value) is not bytes:
        raise wrong_type(what, key, "bin", value)
    if len(value) != size:
        raise MalformedError(f"{what}: {key}: expected {size} bytes, got {len(value)}")
    return value


def int_field(m: dict[str, object], key: str, what: str) -> int:
    """m[key] if it is an int; MalformedError otherwise."""
    value = m[key]
    if type(value) is not int:
        raise wrong_type(what, key, "int", value)
    return value


def str_array(value: object, what: str) -> tuple[str, ...]:
    """`value` as a tuple if it is an array of str; MalformedError otherwise."""
    if type(value) is not list:
        raise MalformedError(f"{what}: expected an array, got {value_kind(value)}")
    for item in value:
        if type(item) is not str:
            raise MalformedError(f"{what}: expected an array of str, found {value_kind(item)}")
    return tuple(value)


def signed_pair(blob: bytes, what: str) -> tuple[bytes, bytes]:
    """Split the array [bytes, 64-byte signature] that signed structures travel as."""
    value = strict_unpack(blob, what)
    if type(value) is not list or len(value) != 2:
        raise MalformedError(f"{what}: expected the array [bytes, signature]")
    data, signature = value
    if type(data) is not bytes or type(signature) is not bytes:
        raise MalformedError(f"{what}: both elements must be bin")
    if len(signature) != SIGNATURE_SIZE:
        raise MalformedError(f"{what}: signature: expected 64 bytes, got {len(signature)}")
    return data, signature
