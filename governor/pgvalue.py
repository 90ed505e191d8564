"""PostgreSQL's own reading of a setting's value, ported from its C (guc.c: parse_bool,
parse_int, parse_real, convert_to_base_unit), so governor accepts exactly what the server will:
`log_file_mode: '0600'` (strtol reads octal), `0x10`, `1.5GB` (rounded to the next smaller unit),
`16 MB`, `tru` (a prefix of true), and refuses ` on` (no trimming), `16 s` for a memory setting
or `5ms` for one without a unit. tests/test_pgparams_postgres.py checks this against the server.

--describe-config gives no units, so those of the settings that have one are listed here, as
pg_settings.unit shows them (PostgreSQL 13 to 17); a setting missing here takes no unit.
tests/test_pgparams_postgres.py asks every installed server which of its settings take which."""
from __future__ import annotations

import math
import re
from typing import Dict, Optional, Tuple

C_SPACE = " \t\n\v\f\r"
INT_MIN, INT_MAX = -2**31, 2**31 - 1
LONG_MAX = 2**63 - 1
MAX_UNIT_LEN = 3

MEMORY = (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024), ("B", 1))     # in bytes
TIME = (("d", 86400000.0), ("h", 3600000.0), ("min", 60000.0), ("s", 1000.0), ("ms", 1.0), ("us", 0.001))  # in ms
BASES = {"B": (MEMORY, 1), "kB": (MEMORY, 1024), "8kB": (MEMORY, 8192), "MB": (MEMORY, 1024**2),
         "ms": (TIME, 1.0), "s": (TIME, 1000.0), "min": (TIME, 60000.0)}

_BLOCKS = ("shared_buffers temp_buffers effective_cache_size min_parallel_table_scan_size "
           "min_parallel_index_scan_size backend_flush_after bgwriter_flush_after checkpoint_flush_after "
           "wal_writer_flush_after wal_buffers commit_timestamp_buffers multixact_member_buffers "
           "multixact_offset_buffers notify_buffers serializable_buffers subtransaction_buffers transaction_buffers")
_KB = ("work_mem maintenance_work_mem autovacuum_work_mem logical_decoding_work_mem temp_file_limit max_stack_depth "
       "log_temp_files gin_pending_list_limit vacuum_buffer_usage_limit huge_page_size log_rotation_size "
       "wal_skip_threshold")
_MB = "max_wal_size min_wal_size wal_keep_size max_slot_wal_keep_size min_dynamic_shared_memory"
_BYTES = ("track_activity_query_size wal_decode_buffer_size log_parameter_max_length "
          "log_parameter_max_length_on_error")
_MS = ("statement_timeout lock_timeout idle_in_transaction_session_timeout idle_session_timeout deadlock_timeout "
       "log_min_duration_statement log_min_duration_sample log_autovacuum_min_duration wal_receiver_timeout "
       "wal_sender_timeout wal_retrieve_retry_interval max_standby_archive_delay max_standby_streaming_delay "
       "recovery_min_apply_delay bgwriter_delay wal_writer_delay vacuum_cost_delay autovacuum_vacuum_cost_delay "
       "log_startup_progress_interval client_connection_check_interval transaction_timeout tcp_user_timeout")
_S = ("authentication_timeout checkpoint_timeout checkpoint_warning archive_timeout autovacuum_naptime "
      "wal_receiver_status_interval tcp_keepalives_idle tcp_keepalives_interval post_auth_delay pre_auth_delay")
_MIN = "log_rotation_age old_snapshot_threshold wal_summary_keep_time"
UNITS: Dict[str, str] = {
    **dict.fromkeys(_BLOCKS.split(), "8kB"), **dict.fromkeys(_KB.split(), "kB"), **dict.fromkeys(_MB.split(), "MB"),
    **dict.fromkeys(_BYTES.split(), "B"), **dict.fromkeys(_MS.split(), "ms"), **dict.fromkeys(_S.split(), "s"),
    **dict.fromkeys(_MIN.split(), "min"),
}


def parse_bool(text: str) -> Optional[bool]:
    """True/False, or None when PostgreSQL would refuse it: a case-insensitive prefix of true,
    false, yes, no (one letter is enough), of on or off (two letters), or 1 or 0; no spaces."""
    low = text.lower()
    if not low:
        return None
    for word, value, least in (("true", True, 1), ("false", False, 1), ("yes", True, 1), ("no", False, 1),
                               ("on", True, 2), ("off", False, 2)):
        if low[0] == word[0] and len(low) >= least and word.startswith(low):
            return value
    return {"1": True, "0": False}.get(low)


def _strtol(text: str) -> Tuple[Optional[int], int, bool]:
    """C strtol(text, &end, 0): (value, end index, out of range); value None when nothing was read."""
    i = len(text) - len(text.lstrip(C_SPACE))
    sign = 1
    if text[i:i + 1] in ("+", "-"):
        sign, i = (-1 if text[i] == "-" else 1), i + 1
    if text[i:i + 2].lower() == "0x" and text[i + 2:i + 3] and text[i + 2] in "0123456789abcdefABCDEF":
        match = re.match(r"[0-9a-fA-F]+", text[i + 2:])
        digits, base, start = match.group(0), 16, i + 2      # type: ignore[union-attr]
    elif text[i:i + 1] == "0":
        digits, base, start = re.match(r"[0-7]*", text[i:]).group(0), 8, i    # type: ignore[union-attr]
    else:
        match = re.match(r"[0-9]+", text[i:])
        if match is None:
            return None, 0, False
        digits, base, start = match.group(0), 10, i
    value = sign * int(digits, base)
    return value, start + len(digits), not -LONG_MAX - 1 <= value <= LONG_MAX


_STRTOD = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:"
                     r"(?P<hex>0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?)"
                     r"|(?P<dec>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<inf>inf(?:inity)?)|(?P<nan>nan))",
                     re.IGNORECASE)


def _strtod(text: str) -> Tuple[Optional[float], int, bool]:
    """C strtod(text, &end): (value, end index, out of range)."""
    match = _STRTOD.match(text)
    if match is None:
        return None, 0, False
    body = match.group(0).strip(C_SPACE)
    negative = body.startswith("-")
    body = body.lstrip("+-")
    if match.group("hex"):
        hexpart = body[2:]
        value = float.fromhex("0x" + (hexpart if "p" in hexpart.lower() else hexpart + "p0")) \
            if hexpart.strip(".") else 0.0
    else:
        value = float(body)
    value = -value if negative else value
    mantissa_nonzero = bool(re.search(r"[1-9a-fA-F]", body.split("e")[0].split("E")[0].split("p")[0]
                                      .split("P")[0].replace("x", "").replace("X", "")))
    out_of_range = (math.isinf(value) and not match.group("inf")) or \
        (match.group("dec") is not None and mantissa_nonzero and abs(value) < 2.2250738585072014e-308)
    return value, match.end(), out_of_range


def _to_base(value: float, rest: str, base: str) -> Optional[float]:
    """convert_to_base_unit: `rest` is a unit (then only spaces) of the base unit's kind."""
    unit = re.match(r"[^ \t\n\v\f\r]*", rest).group(0)     # type: ignore[union-attr]
    if len(unit) > MAX_UNIT_LEN or rest[len(unit):].strip(C_SPACE):
        return None
    table, base_size = BASES[base]
    for i, (name, size) in enumerate(table):
        if name == unit:
            converted = value * size / base_size
            if i + 1 < len(table):      # "30.1GB": rounded to a whole number of the next smaller unit
                step = table[i + 1][1] / base_size
                converted = round(converted / step) * step
            return converted
    return None


def parse_number(text: str, integer: bool, unit: Optional[str]) -> Tuple[Optional[float], str]:
    """(the value in the setting's base unit, '') or (None, why): PostgreSQL's parse_int or
    parse_real. `unit`: UNITS' base unit, None for a setting without one."""
    if integer:
        value, end, overflow = _strtol(text)     # nothing read: end 0, where C's endptr stays
        if not overflow and text[end:end + 1] not in (".", "e", "E"):
            number: Optional[float] = float(value) if value is not None else None
        else:
            number, end, overflow = _strtod(text)
    else:
        number, end, overflow = _strtod(text)
    if number is None or end == 0 or overflow or math.isnan(number):
        return None, "not a number as PostgreSQL reads one"
    rest = text[end:].lstrip(C_SPACE)
    if rest:
        if unit is None:
            return None, "this setting takes no unit"
        number = _to_base(number, rest, unit)
        if number is None:
            kind = "a memory unit (B, kB, MB, GB, TB)" if BASES[unit][0] is MEMORY else \
                "a time unit (us, ms, s, min, h, d)"
            return None, f"expected {kind} after the number"
    if integer:
        number = float(round(number))
        if not INT_MIN <= number <= INT_MAX:
            return None, "out of range for an integer"
    return number, ""
