"""Load a policy file (DESIGN section 3) into a :class:`CompiledPolicy`, strictly.

Every problem found is collected with ``file:line`` and raised together as one
:class:`PolicyError`; a policy with a single problem is never returned.  This is
the only module of ``cosigner.policy`` that reads files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo
from itertools import compress
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from cosigner.durations import EXAMPLES as DURATION_EXAMPLES
from cosigner.durations import parse_duration
from cosigner.errors import PolicyError
from cosigner.models import Action
from cosigner.policy import addresses, bundle, parallel
from cosigner.policy.addresses import FORMATS, Format
from cosigner.policy.model import (
    DAY_NAMES,
    AddressCond,
    AddressList,
    AddressSet,
    AmountRange,
    Chain,
    ChainIndex,
    CompiledPolicy,
    Limit,
    Per,
    Rule,
    Scope,
    TimeWindow,
    never_matches,
    residual_check,
)
from cosigner.policy.nodes import Pairs, Reader, line
from cosigner.policy.shadow import find_shadowed

TOP_KEYS = ("version", "name", "default", "on_invalid", "on_limit", "chains", "lists",
            "limits", "rules")
CHAIN_KEYS = ("name", "address", "decimals")
RULE_KEYS = ("name", "chain", "to", "from", "amount", "time", "action")
LIMIT_KEYS = ("name", "chain", "to", "from", "window", "max_amount", "max_count", "per")
MAX_DECIMALS = 36
MAX_WINDOW = timedelta(days=366)
_EXPAND_AT_MOST = 64  # a larger list in a rule's to: in is probed as a set, not indexed by key

_LIST_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HOURS = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]|24):([0-5][0-9])")
_EXPLICIT_ACTIONS = (Action.HOLD.value, Action.REJECT.value)
# libyaml's composer gives the same nodes (tags, styles, marks) about ten times faster.
#: list_verdicts' bytes as 0/1 masks for itertools.compress: a valid evm entry, a valid
#: tron one, either.
_IS_EVM = bytes.maketrans(b"et-", b"\x01\x00\x00")
_IS_TRON = bytes.maketrans(b"et-", b"\x00\x01\x00")
_IS_VALID = bytes.maketrans(b"et-", b"\x01\x01\x00")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_policy(path: str | Path) -> CompiledPolicy:
    """Load and compile the policy at *path*; raise :class:`PolicyError` with every problem."""
    return _Loader(Path(path)).load()


def try_load_policy(path: str | Path) -> CompiledPolicy | PolicyError:
    """The reload contract: the compiled policy, or the error; never raises for a bad file."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        return exc


@dataclass
class _Sources:
    """Files read, in order, with their content (for the sha256)."""

    items: list[tuple[str, Path, bytes]] = field(default_factory=list)

    def sha256(self, policy_path: Path) -> str:
        """The bundle digest (DESIGN section 11) of exactly the bytes that were parsed."""
        return bundle.digest(bundle.manifest(
            (bundle.relative_name(policy_path, path), data) for _, path, data in self.items))


class _UnquotingReader(Reader):
    """A Reader for list files: errors name file:line and never quote the entry."""

    def error(self, node: yaml.Node | int, message: str) -> None:
        super().error(node, _QUOTED_ADDRESS.sub("address on this line", message))


_QUOTED_ADDRESS = re.compile(r"address (['\"]).*?\1")


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.r = Reader(str(path), self.problems)
        self.sources = _Sources()
        self.chains: dict[str, Chain] = {}
        self.lists: dict[str, AddressList] = {}
        self._has_other = False  # some chain uses the other format (set by _chains)

    # -- entry -------------------------------------------------------------

    def load(self) -> CompiledPolicy:
        text = self._read(self.path, "policy", str(self.path))
        root = self._compose(text) if text is not None else None
        if root is None:
            raise PolicyError(self.problems)
        top = self.r.mapping(root, "the policy", TOP_KEYS, ("version", "name", "chains"))
        if top is None:
            raise PolicyError(self.problems)
        policy = self._compile(top)
        if self.problems or policy is None:
            raise PolicyError(self.problems)
        return policy

    def _read(self, path: Path, label: str, shown: str) -> str | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.problems.append(f"{shown}:1: file not found")
            return None
        except OSError as exc:
            self.problems.append(f"{shown}:1: cannot read: {exc.strerror or exc}")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            at = data[: exc.start].count(b"\n") + 1
            self.problems.append(f"{shown}:{at}: not valid UTF-8")
            return None
        self.sources.items.append((label, path, data))
        return text

    def _compose(self, text: str) -> yaml.Node | None:
        try:
            root = yaml.compose(text, Loader=_LOADER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = mark.line + 1 if mark is not None else 1
            self.r.error(at, f"YAML syntax: {exc.problem or exc.context}")
            return None
        except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML parse error is marked
            self.r.error(1, f"YAML: {exc}")
            return None
        if root is None:
            self.r.error(1, "the policy is empty")
        return root

    def _compile(self, top: Pairs) -> CompiledPolicy | None:
        r = self.r
        version = r.each(top, "version", r.integer, "version", 1)
        if version is not None and version != 1:
            r.error(top["version"][1], f"unsupported policy version {version} (expected 1)")
        name = r.each(top, "name", r.string, "name")
        if name is not None and not name.strip():
            r.error(top["name"][1], "name must not be empty")
        default = self._fallback(top, "default")
        on_invalid = self._fallback(top, "on_invalid")
        on_limit = self._fallback(top, "on_limit")
        if "chains" in top:
            self._chains(top["chains"][1])
        if "lists" in top:
            self._lists(top["lists"][1])
        limits = self._limits(top["limits"][1]) if "limits" in top else []
        rules = self._rules(top["rules"][1]) if "rules" in top else []
        for earlier, later in find_shadowed(rules):
            if earlier is later:
                r.error(later.line, f"rule {later.name!r} can never match: its not_in excludes "
                                    f"every address of its in")
                continue
            r.error(later.line, f"rule {later.name!r} can never match: the earlier rule "
                                f"{earlier.name!r} (line {earlier.line}) matches everything "
                                f"it matches")
        if self.problems or name is None:
            return None
        return CompiledPolicy(
            name=name, sha256=self.sources.sha256(self.path),
            sources=tuple(p for _, p, _ in self.sources.items),
            default=default, on_invalid=on_invalid, on_limit=on_limit,
            chains=dict(self.chains), lists=dict(self.lists), rules=tuple(rules),
            limits=tuple(limits), index=_index(self.chains, rules, limits))

    def _fallback(self, top: Pairs, key: str) -> Action:
        if key not in top:
            return Action.HOLD
        node = top[key][1]
        value = self.r.string(node, key)
        if value == Action.APPROVE.value:
            self.r.error(node, f"{key}: approve is refused: only an explicit rule may approve")
        elif value is not None and value not in _EXPLICIT_ACTIONS:
            self.r.error(node, f"{key} must be hold or reject, not {value!r}")
        elif value is not None:
            return Action(value)
        return Action.HOLD

    # -- chains and lists --------------------------------------------------

    def _chains(self, node: yaml.Node) -> None:
        r = self.r
        pairs = r.mapping(node, "chains", ())
        if pairs is None:
            return
        if not node.value:
            r.error(node, "chains must declare at least one chain")
        for chain_id, (key_node, value) in pairs.items():
            if not chain_id.isascii() or not chain_id.isdigit():
                r.error(key_node, f"chain id {chain_id!r} must be decimal digits")
            what = f"chain {chain_id!r}"
            spec = r.mapping(value, what, CHAIN_KEYS, CHAIN_KEYS)
            if spec is None:
                continue
            name = r.each(spec, "name", r.string, f"name of {what}")
            fmt = r.each(spec, "address", r.choice, f"address of {what}", FORMATS)
            decimals = r.each(spec, "decimals",
                              r.integer, f"decimals of {what}", 0)
            if decimals is not None and decimals > MAX_DECIMALS:
                r.error(spec["decimals"][1], f"decimals of {what} must be at most {MAX_DECIMALS}")
                decimals = None
            if name is not None and fmt is not None and decimals is not None:
                self.chains[chain_id] = Chain(chain_id, name, _as_format(fmt), decimals)
        self._has_other = any(c.address == "other" for c in self.chains.values())

    def _classify(self, reader: Reader, node: yaml.Node | int, text: str,
                  into: dict[Format, set[str]], *,
                  is_evm: Callable[[str], bool] = addresses.is_evm,
                  is_tron: Callable[[str], bool] = addresses.is_tron) -> None:
        """Check one list or literal address and add its comparison keys to *into*."""
        # A valid evm or tron address is clean ASCII by its shape: the common case is
        # settled by the validity checks alone; the rest finds out what is wrong.
        if is_evm(text):
            self._add(into, "evm", text)
        elif is_tron(text):
            self._add(into, "tron", text)
        elif not addresses.has_clean_chars(text):
            reader.error(node, f"address {text!r} contains whitespace, control, zero-width or "
                               f"non-ASCII characters")
        elif addresses.looks_evm(text):
            reader.error(node, f"address {text!r} is not a valid evm address (0x and 40 hex "
                               f"digits; mixed case must be a valid EIP-55 checksum)")
        elif addresses.looks_tron(text):
            reader.error(node, f"address {text!r} fails its tron base58check checksum")
        elif self._has_other:
            into["other"].add(text)
        else:
            reader.error(node, f"address {text!r} is neither evm nor tron, and no chain uses the "
                               f"other address format")

    def _add(self, into: dict[Format, set[str]], fmt: Format, text: str) -> None:
        into[fmt].add(addresses.key(text, fmt))
        if self._has_other:
            into["other"].add(text)

    def _lists(self, node: yaml.Node) -> None:
        r = self.r
        pairs = r.mapping(node, "lists", ())
        for list_name, (key_node, value) in (pairs or {}).items():
            if _LIST_NAME.fullmatch(list_name) is None:
                r.error(key_node, f"list name {list_name!r} must be lowercase letters, digits, "
                                  f"'-' or '_', starting with a letter")
                continue
            keys: dict[Format, set[str]] = {f: set() for f in FORMATS}
            if isinstance(value, yaml.MappingNode):
                spec = r.mapping(value, f"list {list_name!r}", ("file",), ("file",))
                if spec and "file" in spec:
                    self._list_file(spec["file"][1], keys)
            else:
                for item, text in r.strings(value, f"list {list_name!r}", single_ok=False):
                    self._classify(r, item, text, keys)
            self.lists[list_name] = _address_list(list_name, keys)

    def _confined(self, node: yaml.Node, relative: str) -> Path | None:
        """The list file's path, if it lies inside the policy's directory tree.

        Symlinks are resolved first, both for the directory and for the file, so a
        Kubernetes ConfigMap (``..data`` -> a timestamped directory, both inside the
        mount) loads, while an absolute path, ``..`` or a link out of the tree does not.
        """
        root = self.path.parent.resolve()
        candidate = Path(relative)
        if candidate.is_absolute() or ".." in candidate.parts:
            self.r.error(node, f"list file {relative!r} must be a relative path inside the "
                               f"policy's directory ({root})")
            return None
        path = self.path.parent / candidate
        try:
            path.resolve().relative_to(root)
        except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
            self.r.error(node, f"list file {relative!r} leads outside the policy's "
                               f"directory ({root})")
            return None
        return path

    def _list_file(self, node: yaml.Node, keys: dict[Format, set[str]]) -> None:
        relative = self.r.string(node, "list file")
        if relative is None:
            return
        path = self._confined(node, relative)
        if path is None:
            return
        if not path.is_file():
            self.r.error(node, f"list file {relative!r} not found (looked at {path})")
            return
        text = self._read(path, relative, str(path))
        if text is None:
            return
        # Entries of a list file are never quoted back in an error: a file that is not
        # a list (a key, a password file) must not leak through the policy's errors.
        reader = _UnquotingReader(str(path), self.problems)
        cleaned = [(raw.split("#", 1)[0] if "#" in raw else raw).strip()
                   for raw in text.splitlines()]
        entries = [entry for entry in cleaned if entry]
        # What _classify does for a valid evm or tron entry, one byte per entry, checked in
        # bulk (addresses.list_verdicts) on two cores for a big file (parallel.verdicts);
        # anything else goes through _classify itself, in line order.
        found = parallel.verdicts(addresses.list_verdicts, entries, addresses.VERDICTS)
        keys["evm"].update(map(str.lower, compress(entries, found.translate(_IS_EVM))))
        keys["tron"].update(compress(entries, found.translate(_IS_TRON)))
        if self._has_other:  # a valid evm or tron entry is also an exact "other" key
            keys["other"].update(compress(entries, found.translate(_IS_VALID)))
        at = found.find(b"-")
        if at < 0:
            return
        numbers = [number for number, entry in enumerate(cleaned, start=1) if entry]
        # The same checks as a literal address, with checksum tests that skip the cache
        # (a big list would only flush the evaluation cache).
        is_evm = addresses.evm_validator(addresses.checksum_checker())
        is_tron = addresses.tron_validator(addresses.tron_checksum_ok)
        while at >= 0:
            self._classify(reader, numbers[at], entries[at], keys, is_evm=is_evm,
                           is_tron=is_tron)
            at = found.find(b"-", at + 1)

    # -- conditions --------------------------------------------------------

    def _chain_scope(self, pairs: Pairs, what: str) -> frozenset[str] | None:
        if "chain" not in pairs:
            return None
        out = set()
        for item, chain_id in self.r.strings(pairs["chain"][1], f"chain of {what}",
                                             single_ok=True):
            if chain_id not in self.chains:
                self.r.error(item, f"{what} names chain {chain_id!r}, which is not declared "
                                   f"in chains")
            out.add(chain_id)
        return frozenset(out)

    def _address_set(self, node: yaml.Node, what: str) -> AddressSet | None:
        members: list[AddressList] = []
        literal: dict[Format, set[str]] = {f: set() for f in FORMATS}
        shown: list[str] = []
        before = len(self.problems)
        entries = self.r.strings(node, what, single_ok=False)
        for item, text in entries:
            if text in self.lists:
                members.append(self.lists[text])
                shown.append(text)
            elif _LIST_NAME.fullmatch(text):
                self.r.error(item, f"{what} names list {text!r}, which does not exist")
            else:
                self._classify(self.r, item, text, literal)
                shown.append(text if len(text) <= 14 else text[:8] + "..." + text[-4:])
        if any(literal.values()):
            members.append(_address_list("<literal>", literal))
        if not entries or len(self.problems) > before:
            return None
        return AddressSet(tuple(members), "[" + ", ".join(shown) + "]")

    def _address_cond(self, pairs: Pairs, key: str, what: str) -> AddressCond | None:
        if key not in pairs:
            return None
        spec = self.r.mapping(pairs[key][1], f"{key} of {what}", ("in", "not_in"))
        if spec is None:
            return None
        if not spec:
            self.r.error(pairs[key][1], f"{key} of {what} needs in and/or not_in")
        in_ = self.r.each(spec, "in", self._address_set, f"{key}.in of {what}")
        not_in = self.r.each(spec, "not_in",
                             self._address_set, f"{key}.not_in of {what}")
        return AddressCond(in_, not_in)

    def _scope(self, pairs: Pairs, what: str) -> Scope:
        return Scope(self._chain_scope(pairs, what), self._address_cond(pairs, "to", what),
                     self._address_cond(pairs, "from", what))

    def _amount(self, node: yaml.Node, what: str) -> AmountRange | None:
        r = self.r
        spec = r.mapping(node, f"amount of {what}", ("min", "max"))
        if spec is None:
            return None
        if not spec:
            r.error(node, f"amount of {what} needs min and/or max")
        low = r.each(spec, "min", r.decimal, f"amount.min of {what}")
        high = r.each(spec, "max", r.decimal, f"amount.max of {what}")
        if low is not None and high is not None and low > high:
            r.error(node, f"amount of {what}: min {low} is above max {high}")
        return AmountRange(low, high)

    def _time(self, node: yaml.Node, what: str) -> TimeWindow | None:
        spec = self.r.mapping(node, f"time of {what}", ("days", "hours", "tz"))
        if spec is None:
            return None
        if "days" not in spec and "hours" not in spec:
            self.r.error(node, f"time of {what} needs days and/or hours")
        days = self.r.each(spec, "days", self._days, what)
        start, end = self.r.each(spec, "hours", self._hours, what) or (None, None)
        tz_name, tz = self.r.each(spec, "tz", self._tz, what) or ("UTC", UTC)
        return TimeWindow(days, start, end, tz, tz_name)

    def _days(self, node: yaml.Node, what: str) -> frozenset[int]:
        found = set()
        for item, day in self.r.strings(node, f"days of {what}", single_ok=False):
            if day in DAY_NAMES:
                found.add(DAY_NAMES.index(day))
            else:
                self.r.error(item, f"day {day!r} of {what} must be one of {', '.join(DAY_NAMES)}")
        return frozenset(found)

    def _hours(self, node: yaml.Node, what: str) -> tuple[int, int] | None:
        hours = self.r.string(node, f"hours of {what}")
        match = _HOURS.fullmatch(hours) if hours is not None else None
        if match is None:
            if hours is not None:
                self.r.error(node, f"hours of {what} must look like \"08:00-20:00\", "
                                   f"not {hours!r}")
            return None
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if end > 24 * 60 or start == end:
            self.r.error(node, f"hours of {what}: {hours!r} is not a range")
        return start, end

    def _tz(self, node: yaml.Node, what: str) -> tuple[str, tzinfo]:
        tz_name = self.r.string(node, f"tz of {what}") or "UTC"
        try:
            return tz_name, ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            self.r.error(node, f"unknown time zone {tz_name!r} in {what}")
            return tz_name, UTC

    # -- rules and limits --------------------------------------------------

    def _named_entries(self, node: yaml.Node, section: str, keys: tuple[str, ...],
                       required: tuple[str, ...]) -> Iterable[tuple[yaml.Node, Pairs, str]]:
        seen: dict[str, int] = {}
        for entry in self.r.sequence(node, section, non_empty=False):
            pairs = self.r.mapping(entry, f"entry of {section}", keys, required)
            if pairs is None or "name" not in pairs:
                continue
            name = self.r.string(pairs["name"][1], f"name in {section}")
            if name is None:
                continue
            if _RULE_NAME.fullmatch(name) is None:
                self.r.error(pairs["name"][1], f"name {name!r} in {section} must be letters, "
                                               f"digits, '.', '-' or '_' (at most 64)")
                continue
            if name in seen:
                self.r.error(pairs["name"][1], f"duplicate name {name!r} in {section} "
                                               f"(first at line {seen[name]})")
                continue
            seen[name] = line(entry)
            yield entry, pairs, name

    def _rules(self, node: yaml.Node) -> list[Rule]:
        r = self.r
        rules: list[Rule] = []
        for entry, pairs, name in self._named_entries(node, "rules", RULE_KEYS,
                                                      ("name", "action")):
            what = f"rule {name!r}"
            action = r.each(pairs, "action", r.choice, f"action of {what}",
                                                                tuple(a.value for a in Action))
            scope = self._scope(pairs, what)
            amount = r.each(pairs, "amount", self._amount, what)
            window = r.each(pairs, "time", self._time, what)
            if action is not None:
                rules.append(Rule(name, len(rules), line(entry), Action(action), scope, amount,
                                  window))
        return rules

    def _limits(self, node: yaml.Node) -> list[Limit]:
        r = self.r
        limits: list[Limit] = []
        for entry, pairs, name in self._named_entries(node, "limits", LIMIT_KEYS,
                                                      ("name", "window")):
            what = f"limit {name!r}"
            window = r.each(pairs, "window", self._window, what)
            max_amount = r.each(pairs, "max_amount",
                                r.decimal, f"max_amount of {what}", positive=True)
            max_count = r.each(pairs, "max_count",
                               r.integer, f"max_count of {what}", 1)
            if "max_amount" not in pairs and "max_count" not in pairs:
                r.error(entry, f"{what} needs max_amount and/or max_count")
            per = r.each(pairs, "per", r.choice, f"per of {what}",
                                                          ("chain", "to", "from"))
            scope = self._scope(pairs, what)
            if window is not None and (max_amount is not None or max_count is not None):
                limits.append(Limit(name, line(entry), window, max_amount, max_count,
                                    _as_per(per or "chain"), scope))
        return limits

    def _window(self, node: yaml.Node, what: str) -> timedelta | None:
        text = self.r.string(node, f"window of {what}")
        window = parse_duration(text) if text is not None else None
        if not window:  # None, or a zero window
            if text is not None:
                self.r.error(node, f"window of {what} must look like {DURATION_EXAMPLES}, "
                                   f"not {text!r}")
            return None
        if window > MAX_WINDOW:
            self.r.error(node, f"window of {what} is longer than 366d")
            return None
        return window


def _as_format(value: str) -> Format:
    for fmt in FORMATS:
        if fmt == value:
            return fmt
    raise AssertionError(value)  # pragma: no cover - choice() checked it


def _as_per(value: str) -> Per:
    return "to" if value == "to" else "from" if value == "from" else "chain"


def _address_list(name: str, keys: dict[Format, set[str]]) -> AddressList:
    plain_other = {o for o in keys["other"]
                   if not (addresses.looks_evm(o) or addresses.looks_tron(o))}
    size = len(keys["evm"]) + len(keys["tron"]) + len(plain_other)
    return AddressList(name, {f: frozenset(v) for f, v in keys.items()}, size)


def _index(chains: dict[str, Chain], rules: list[Rule],
           limits: list[Limit]) -> dict[str, ChainIndex]:
    """Per chain: generic rule indexes, rule indexes by destination key, and limits in scope.

    A list in a rule's ``to: in`` larger than ``_EXPAND_AT_MOST`` keys is not
    copied key by key into ``by_to`` (100,000 keys per chain would cost more to
    build than the whole policy): evaluation probes its set instead.
    """
    return {chain_id: _chain_index(chain_id, chain.address, rules, limits)
            for chain_id, chain in chains.items()}


def _chain_index(chain_id: str, fmt: Format, rules: list[Rule],
                 limits: list[Limit]) -> ChainIndex:
    """The :class:`ChainIndex` of one chain (see :func:`_index`)."""
    generic: list[int] = []
    by_to: dict[str, list[int]] = {}
    listed: dict[int, tuple[frozenset[str], list[int]]] = {}  # by id() of the key set
    for rule in rules:
        if rule.scope.chains is not None and chain_id not in rule.scope.chains:
            continue
        to = rule.scope.to
        if to is None or to.in_ is None:
            generic.append(rule.index)
        else:
            _index_destinations(rule.index, to.in_, fmt, by_to, listed)
    in_scope = tuple(lim for lim in limits
                     if lim.scope.chains is None or chain_id in lim.scope.chains)
    picked = set(generic).union(*by_to.values(), *(v for _, v in listed.values()))
    checks = tuple(residual_check(rule, fmt) if rule.index in picked else never_matches
                   for rule in rules)
    return ChainIndex(tuple(generic), {k: tuple(v) for k, v in by_to.items()}, in_scope,
                      tuple((keys, tuple(v)) for keys, v in listed.values()), checks)


def _index_destinations(rule_index: int, in_: AddressSet, fmt: Format,
                        by_to: dict[str, list[int]],
                        listed: dict[int, tuple[frozenset[str], list[int]]]) -> None:
    """Offer the rule for each destination of its ``to: in`` (small sets key by key)."""
    for member in in_.members:
        keys = member.by_format[fmt]
        if len(keys) > _EXPAND_AT_MOST:
            _append_once(listed.setdefault(id(keys), (keys, []))[1], rule_index)
            continue
        for key in keys:
            _append_once(by_to.setdefault(key, []), rule_index)


def _append_once(indexes: list[int], rule_index: int) -> None:
    """Append a rule index (rules come in order, so a repeat can only be the last one)."""
    if not indexes or indexes[-1] != rule_index:
        indexes.append(rule_index)
