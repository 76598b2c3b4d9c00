"""The tree the mount shows: inodes, lookups, listings and their time-to-live.

Owns: inode numbers and lookup counts (`forget`), what each mount path is (the root, the
scheme/host/account levels named by the config, directories and files inside a bucket), the
attribute/listing/negative caches and their TTLs, the rules for keys that cannot be shown,
and which servers a path may make the daemon contact (`may_contact`: only those clearml.conf
names, unless `-o allow_unlisted_endpoints`). Never touches cache files; talks to stores only
through `Transfer`.

A store without listings (a plain HTTP server) has no directories of its own: below a host,
a name is a file when a HEAD finds an object there and a directory otherwise, and a
directory shows only the names looked up in it (within the TTLs). Which http(s) hosts may be
contacted at all is `may_contact`'s rule like any other endpoint's.

A file inode stands for one object *version*: when the object changes, the next lookup
yields a new inode, so the kernel page cache (kept across opens) never mixes two versions.

A path is kept as its parent's path and its own name (`MountPath`), never as the list of
all its components: what the daemon remembers grows with the number of entries, not with
the square of their depth (keys 10 000 levels deep exist). The components, the URL and the
store of a path are worked out by walking up the parents only when the server is asked (a
lookup miss, a listing), a file is opened or its URL attribute is read; lookups and
listings answered from the caches, getattr, readdir and read never walk.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from clearmount import backends, urls
from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.config import Config
from clearmount.direct import FILE_PREFIX, DirectAccess, Target
from clearmount.errors import NotFound, Stale, StoreError, Unavailable
from clearmount.options import MountOptions
from clearmount.transfer import Transfer

log = logging.getLogger(__name__)

ROOT_INODE = 1
_NAME_MAX = 255
# Pages (of up to 1 000 keys) a background listing reads before it gives up on a directory.
_LIST_AHEAD_PAGES = 10
# Listing entries remembered per mount beyond which expired ones are swept.
_ENTRY_SWEEP_AT = 200_000
#: files whose store and URL an open remembers (`Namespace.object_of`), oldest dropped first
_OBJECTS_KEPT = 100_000
# Unlisted endpoints refused with a WARNING line each; later ones are logged at DEBUG only.
_REFUSED_LOGGED = 100

T = TypeVar("T")


class Kind(enum.Enum):
    ROOT = "root"
    VIRTUAL = "virtual"  # a scheme, host or account level: its names come from the config
    DIR = "dir"  # a bucket root or a prefix inside a bucket
    FILE = "file"
    SYMLINK = "symlink"  # direct access: the kernel follows it, the daemon serves no bytes


class MountPath:
    """A path below the mount point: the path of its parent directory and its own name.

    The paths of a directory's entries share the directory's path, so each level of nesting
    costs one small object. Two paths built apart are equal when their names are, level by
    level, and hash alike (the hash is computed once, from the parent's): paths are the keys
    of the namespace's caches. `parts` walks up to the root, so it costs the depth.
    """

    __slots__ = ("_hash", "depth", "name", "parent")

    def __init__(self, parent: MountPath | None, name: str) -> None:
        self.parent: MountPath | None = parent  # None for the mount point itself
        self.name: str = name  # "" for the mount point
        self.depth: int = 0 if parent is None else parent.depth + 1
        self._hash: int = hash((None if parent is None else parent._hash, name))

    def child(self, name: str) -> MountPath:
        return MountPath(self, name)

    @property
    def parts(self) -> tuple[str, ...]:
        """The components below the mount point, e.g. ("s3", "bucket", "dir", "file")."""
        names = []
        path: MountPath = self
        while path.parent is not None:
            names.append(path.name)
            path = path.parent
        names.reverse()
        return tuple(names)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MountPath):
            return NotImplemented
        mine: MountPath | None = self
        theirs: MountPath | None = other
        # stops at the first ancestor both share (siblings share their parent's object)
        while mine is not theirs:
            if mine is None or theirs is None:
                return False
            if mine._hash != theirs._hash or mine.name != theirs.name:
                return False
            mine, theirs = mine.parent, theirs.parent
        return True

    def __str__(self) -> str:
        return "/".join(self.parts)

    def __repr__(self) -> str:
        return f"MountPath({str(self)!r})"


ROOT_PATH = MountPath(None, "")


@dataclass(eq=False)
class Node:
    inode: int
    path: MountPath  # where it is below the mount point
    kind: Kind
    info: ObjectInfo | None = None  # FILE: the version this inode stands for
    validated_at: float = 0.0
    lookups: int = 0
    target: str | None = None  # SYMLINK: where it points

    @property
    def parts(self) -> tuple[str, ...]:
        """The path's components, found by walking up its parents: not for every read."""
        return self.path.parts


@dataclass(frozen=True)
class Entry:
    """One directory entry as a listing saw it."""

    path: MountPath
    kind: Kind
    info: ObjectInfo | None
    target: str | None = None


@dataclass
class _Known:
    """What the daemon last heard of one path: a file version, a directory, or nothing."""

    kind: Kind | None  # None: it does not exist
    info: ObjectInfo | None
    at: float
    target: str | None = None


@dataclass
class _Listing:
    names: dict[str, _Known]
    at: float
    skipped: list[str] = field(default_factory=list)
    complete: bool = True  # False: cut short, so it proves nothing about absent names


def _identity(path: MountPath, info: ObjectInfo | None, target: str | None) -> tuple[object, ...]:
    """What makes two nodes the same inode: the path, plus the version or link target."""
    if info is not None:
        return (path, info.version)
    if target is not None:
        return (path, "->", target)
    return (path,)


def showable(name: str) -> bool:
    """Whether a listing name can be a directory entry at all."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\0" not in name
        and len(name.encode()) <= _NAME_MAX
    )


#: what gives the namespace the store of a bucket or container (`backends.open_store`)
StoreOpener = Callable[[urls.StorageURL, Config], ObjectStore]


class Namespace:
    def __init__(
        self,
        config: Config,
        options: MountOptions,
        transfer: Transfer,
        direct: DirectAccess,
        open_store: StoreOpener = backends.open_store,
    ) -> None:
        self.options = options
        self.transfer = transfer
        self._open_store = open_store
        self.started = time.time()
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple[object, ...], int] = {}
        self._next_inode = ROOT_INODE + 1
        self._known: dict[MountPath, _Known] = {}
        self._listings: dict[MountPath, _Listing] = {}
        self._listing_ahead: set[MountPath] = set()
        # directories with a listing on its way, and what the mount itself did in them
        # meanwhile: the listing, older than those changes, must not undo them
        self._listing_now: dict[MountPath, int] = {}
        self._changed_while_listing: dict[MountPath, dict[str, _Known]] = {}
        self._too_big: set[MountPath] = set()
        self._refused: set[str] = set()
        # stores without a listing (plain HTTP): the names looked up in each directory
        self._looked_up: dict[MountPath, set[str]] = {}
        self._nursery: trio.Nursery | None = None
        # made through the mount (-o writable): files being written and directories made
        # by mkdir, by parent directory; they show until they exist on the server or go
        self._local: dict[MountPath, dict[str, _Known]] = {}
        self.reload(config, direct)

    def start(self, nursery: trio.Nursery) -> None:
        """Background listings run in `nursery`."""
        self._nursery = nursery

    def reload(self, config: Config, direct: DirectAccess) -> None:
        """Serve with a new configuration from now on (SIGHUP). Nodes handed to the kernel
        stay valid; what was learnt under the old credentials and rules is forgotten."""
        self.config = config
        self.direct = direct
        # only then can a path inside a bucket be direct (file:// is always direct)
        self._remote_rules = bool(direct.substitutions) or any(
            not rule.url.startswith(FILE_PREFIX) for rule in direct.rules
        )
        self._known.clear()
        self._listings.clear()
        self._looked_up.clear()
        # the stores opened with this config, by base URL
        self._stores: dict[str, ObjectStore] = {}
        # what `object_of` worked out under this config, by path
        self._objects: dict[MountPath, tuple[ObjectStore, str]] = {}
        self.root = Node(ROOT_INODE, ROOT_PATH, Kind.ROOT)
        self._nodes[ROOT_INODE] = self.root

    # ----- inodes ---------------------------------------------------------------------------

    def get(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise NotFound(f"unknown inode {inode}")
        return node

    def _node(
        self,
        path: MountPath,
        kind: Kind,
        info: ObjectInfo | None,
        target: str | None = None,
    ) -> Node:
        key = _identity(path, info, target)
        inode = self._by_key.get(key)
        if inode is not None:
            node = self._nodes[inode]
            node.validated_at = time.monotonic()
            return node
        inode = self._next_inode
        self._next_inode += 1
        node = Node(inode, path, kind, info, time.monotonic(), target=target)
        self._nodes[inode] = node
        self._by_key[key] = inode
        return node

    def _parent(self, node: Node) -> Node | None:
        parent = node.path.parent
        if parent is None or parent.depth == 0:
            return self.root
        inode = self._by_key.get((parent,))
        return self._nodes[inode] if inode is not None else None

    def forget(self, inode: int, count: int) -> None:
        node = self._nodes.get(inode)
        if node is None or node.kind is Kind.ROOT:
            return
        node.lookups -= count
        if node.lookups <= 0:
            self.drop_if_unused(node)

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    def drop_if_unused(self, node: Node) -> None:
        """Forget a node the kernel holds no reference to (none left, or none ever given)."""
        if node.lookups > 0 or node.kind is Kind.ROOT or self._nodes.get(node.inode) is not node:
            return
        del self._nodes[node.inode]
        self._by_key.pop(_identity(node.path, node.info, node.target), None)

    # ----- where a path lives ---------------------------------------------------------------

    def container_depth(self, parts: tuple[str, ...]) -> int:
        """How many leading components name the bucket/container root of `parts`."""
        scheme = parts[0]
        if scheme == "s3":
            return 3 if len(parts) > 1 and self._is_s3_host(parts[1]) else 2
        if scheme == "azure":
            return 3
        return 2

    def _is_s3_host(self, name: str) -> bool:
        return urls.is_s3_host(name, self.config.s3)

    def url_of(self, parts: tuple[str, ...]) -> urls.StorageURL:
        return urls.parse_url(urls.path_to_url("/".join(parts)), self.config.s3)

    def url_string(self, node: Node) -> str:
        """The URL ClearML records for this node (what the cache file name hashes)."""
        return str(self.url_of(node.parts)) if node.path.depth else ""

    async def store_for(self, parts: tuple[str, ...]) -> tuple[ObjectStore, str]:
        """The store holding `parts` and the key (or prefix) inside it."""
        depth = self.container_depth(parts)
        url = self._contactable(self.url_of(parts[:depth]))
        stores = self._stores
        store = stores.get(url.base_url)
        if store is None:
            # The first request of a bucket: its store may import an SDK (boto3: ~0.2 s,
            # measured on the loop before this hop) and read credentials, so in a thread.
            # Kept in the dict of the config it was opened with, even if a reload came.
            opened = await self.transfer.local(self._open_store, url, self.config)
            store = stores.setdefault(url.base_url, opened)
        return store, "/".join(parts[depth:])

    async def object_of(self, node: Node) -> tuple[ObjectStore, str]:
        """The store holding the file `node` and its URL (what the cache names it by).

        Remembered by path until the next reload: every open asks, and working them out
        (the path's URL parsed twice, the bucket's base URL) cost a cached open more of the
        loop than its file calls (a DataLoader's next epoch looks each file up anew).
        """
        path = node.path
        objects = self._objects  # this config's, even if a reload comes meanwhile
        found = objects.get(path)
        if found is None:
            parts = path.parts
            store, _ = await self.store_for(parts)
            found = (store, str(self.url_of(parts)))
            if len(objects) >= _OBJECTS_KEPT:
                del objects[next(iter(objects))]
            objects[path] = found
        return found

    def may_contact(self, scheme: str, host: str) -> bool:
        """Whether requests may go to the server of `scheme`://`host` (the URL's netloc).

        Only servers clearml.conf names (`urls.endpoint_listed`) are, unless the mount has
        `-o allow_unlisted_endpoints`: a local user naming `s3/10.0.0.5:6379/...` must not
        make the daemon connect there, nor send it requests signed with the node's
        credentials. The first refusal of each host logs one WARNING naming the option.
        """
        if self.options.allow_unlisted_endpoints or urls.endpoint_listed(scheme, host, self.config):
            return True
        where = f"{scheme}/{host}"
        if where not in self._refused:
            # one line per host; past the first hundred (a user trying names), DEBUG only
            level = logging.WARNING if len(self._refused) < _REFUSED_LOGGED else logging.DEBUG
            if level == logging.WARNING:
                self._refused.add(where)
            log.log(
                level,
                "%s: endpoint not in clearml.conf, not contacted "
                "(mount with -o allow_unlisted_endpoints to allow it)",
                where,
            )
        return False

    def _contactable(self, url: urls.StorageURL) -> urls.StorageURL:
        """`url`, if its server may be contacted; else NotFound (ENOENT)."""
        if not self.may_contact(url.scheme, url.host):
            raise NotFound("endpoint not in clearml.conf", url.base_url)
        return url

    # ----- lookups --------------------------------------------------------------------------

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The child `name` of `parent`, or None when there is none."""
        if name == ".":
            return parent
        if name == "..":
            return self._parent(parent)
        if not showable(name) or parent.kind is Kind.FILE:
            return None
        path = parent.path.child(name)
        known = self._fresh(path)
        local = self._local.get(parent.path)
        if local and name in local:
            known = local[name]
        if known is None:
            parts = path.parts
            direct = await self._direct(parts)
            if direct is not None:
                known = direct
            elif parent.kind in (Kind.ROOT, Kind.VIRTUAL):
                # These levels list what the config names; others are still found by name.
                known = await self._probe_virtual(parent, parts)
            else:
                # Listings answer for the names they saw, never for absent ones: an object
                # uploaded a moment ago must be found by the job just handed its URL.
                store, key = await self.store_for(parts)
                known = await self._probe(store, key, path)
                if store.listable:
                    self._list_ahead(parent.path)
                else:
                    # nothing to list ahead: the directory shows the names looked up
                    self._looked_up.setdefault(parent.path, set()).add(name)
            self._remember(path, known)
        if known.kind is None:
            return None
        return self._node(path, known.kind, known.info, known.target)

    def _fresh(self, path: MountPath) -> _Known | None:
        known = self._known.get(path)
        if known is None:
            return None
        ttl = self.options.attr_timeout if known.kind else self.options.negative_timeout
        return known if time.monotonic() - known.at < ttl else None

    def _listing_fresh(self, listing: _Listing) -> bool:
        return self._age(listing.at) < self.options.dir_timeout

    @staticmethod
    def _age(moment: float) -> float:
        return time.monotonic() - moment

    def _remember_unless_newer(self, path: MountPath, known: _Known) -> None:
        """`_remember`, unless what is known of `path` was learnt after `known` (a listing
        or a lookup's one-key listing answers with what was true when it was sent)."""
        newer = self._known.get(path)
        if newer is None or newer.at <= known.at:
            self._remember(path, known)

    def _remember(self, path: MountPath, known: _Known) -> None:
        if len(self._known) >= _ENTRY_SWEEP_AT:
            horizon = time.monotonic() - max(self.options.attr_timeout, self.options.dir_timeout)
            self._known = {k: v for k, v in self._known.items() if v.at >= horizon}
            self._looked_up = {
                folder: kept
                for folder, names in self._looked_up.items()
                if (kept := {name for name in names if folder.child(name) in self._known})
            }
        self._known[path] = known

    def _direct_target(self, parts: tuple[str, ...]) -> Target | None:
        if parts[0] == "file":
            return Target("/" + "/".join(parts[1:]), "file://") if len(parts) > 1 else None
        if len(parts) < 2 or not self._remote_rules:
            return None
        try:
            url = urls.path_to_url("/".join(parts))
        except ValueError:
            return None
        return self.direct.resolve(url, is_dir=True)

    async def _direct(self, parts: tuple[str, ...]) -> _Known | None:
        """A symlink for a direct path (None when `parts` is not direct)."""
        target = self._direct_target(parts)
        if target is None:
            return None
        now = time.monotonic()
        inside_mount = self.direct.mountpoint is not None and target.path.startswith(
            str(self.direct.mountpoint) + "/"
        )
        # Never stat inside our own mount from its event loop; NFS may block: use a thread.
        if not inside_mount and not await self.transfer.metadata(os.path.lexists, target.path):
            log.warning(
                "%s: direct-access target %s does not exist (rule %s)",
                "/".join(parts),
                target.path,
                target.rule,
            )
            return _Known(None, None, now)
        return _Known(Kind.SYMLINK, None, now, target.path)

    async def _ask(self, store: ObjectStore, call: Callable[..., T], *args: object) -> T:
        """A metadata request to `store` (`call` is one of its methods), given up after the
        store's deadline, retries included."""
        return await self.transfer.metadata(
            call, *args, deadline=store.deadlines.operation, url=store.base_url
        )

    async def _probe(self, store: ObjectStore, key: str, path: MountPath) -> _Known:
        """Ask the server whether `key` (at `path`) is a file, a directory, or nothing.

        HEAD and a one-key listing run together: a key `a` beside keys `a/...` shows as the
        directory (as listings do), and neither answer waits for the other. A folder the
        listing shows inside is remembered as one, as a listing's are: the walk down a deep
        path (`a/b/c/file`, each folder holding one folder) asks nothing of the next level.
        """
        if not store.listable:
            return await self._probe_unlisted(store, key)
        found: dict[str, object] = {}
        failures: dict[str, StoreError] = {}
        folders: tuple[str, ...] = ()  # what the one-key listing began with
        started = time.monotonic()

        async def head() -> None:
            try:
                found["file"] = await self._ask(store, store.head, key)
            except NotFound:
                pass
            except StoreError as exc:
                failures["head"] = exc

        async def children() -> None:
            nonlocal folders
            try:
                page = await self._ask(store, store.list_page, key + "/", None, 1)
            except StoreError as exc:
                failures["list"] = exc
            else:
                found["dir"] = bool(page.objects or page.prefixes)
                folders = page.prefixes

        async with trio.open_nursery() as nursery:
            nursery.start_soon(head)
            nursery.start_soon(children)
        if failures:
            # prefer the HEAD's error: it names the object itself, the listing's "key/"
            raise failures.get("head") or failures["list"]
        now = time.monotonic()
        if found.get("dir"):
            if "file" in found:
                log.warning("skipping object %s: a directory of the same name exists", key)
            self._learn_folders(path, key + "/", folders, started)
            return _Known(Kind.DIR, None, now)
        info = found.get("file")
        if isinstance(info, ObjectInfo):
            return _Known(Kind.FILE, info, now)
        return _Known(None, None, now)

    def _learn_folders(
        self, path: MountPath, prefix: str, folders: tuple[str, ...], at: float
    ) -> None:
        """Remember the `folders` (prefixes `prefix` + name + "/") a listing of `path` began
        with, unless something newer is known of them. Not where direct-access rules may
        make a name a symlink instead (`_apply_direct` decides those, for whole listings)."""
        if self._remote_rules:
            return
        for folder in folders:
            name = folder[len(prefix) :].removesuffix("/")
            if not showable(name):
                continue
            self._remember_unless_newer(path.child(name), _Known(Kind.DIR, None, at))

    async def _probe_unlisted(self, store: ObjectStore, key: str) -> _Known:
        """A server without listings (plain HTTP): the name is a file when the server has
        an object there (HEAD), otherwise a directory; the walk to a deep file passes
        through names the server does not have."""
        try:
            info = await self._ask(store, store.head, key)
        except NotFound:
            return _Known(Kind.DIR, None, time.monotonic())
        return _Known(Kind.FILE, info, time.monotonic())

    async def _probe_virtual(self, parent: Node, parts: tuple[str, ...]) -> _Known:
        """Whether `parts`, a child of the root or of a scheme, host or account level, exists."""
        name = parts[-1]
        now = time.monotonic()
        if parent.kind is Kind.ROOT:
            # http/ and https/ are always there, listed or not: any host may be named below
            exists = name in self.schemes() or name in urls.HTTP_SCHEMES
            return _Known(Kind.VIRTUAL if exists else None, None, now)
        scheme = parts[0]
        if scheme in urls.HTTP_SCHEMES:
            return _Known(Kind.DIR if self.may_contact(scheme, name) else None, None, now)
        is_host_level = (scheme == "s3" and len(parts) == 2 and self._is_s3_host(name)) or (
            scheme == "azure" and len(parts) == 2
        )
        if is_host_level:
            url = self.url_of(parts)
            if self._anchored(parts) or self.may_contact(url.scheme, url.host):
                return _Known(Kind.VIRTUAL, None, now)
            return _Known(None, None, now)
        store, _ = await self.store_for(parts)
        exists = await self._ask(store, store.exists)
        return _Known(Kind.DIR if exists else None, None, now)

    async def revalidate(self, node: Node) -> None:
        """Before an open: make sure the file still is the version its inode stands for.

        Raises `Stale` when the object changed, which the kernel answers by looking the name
        up again (and so opening the new version's inode); `NotFound` when it is gone.
        """
        if node.info is None or time.monotonic() - node.validated_at < self.options.attr_timeout:
            return
        parts = node.parts
        store, key = await self.store_for(parts)
        try:
            info = await self._ask(store, store.head, key)
        except NotFound:
            self._remember(node.path, _Known(None, None, time.monotonic()))
            raise
        self._remember(node.path, _Known(Kind.FILE, info, time.monotonic()))
        if info.version != node.info.version or info.size != node.info.size:
            self._forget_listing_around(node)
            raise Stale("object changed since it was looked up", str(self.url_of(parts)))
        node.validated_at = time.monotonic()

    def invalidate(self, node: Node) -> None:
        """Forget what is known of `node`'s path: it changed on the server."""
        self._known.pop(node.path, None)
        self._forget_listing_around(node)
        node.validated_at = 0.0

    def _forget_listing_around(self, node: Node) -> None:
        """Drop the listing of the directory holding `node`: it showed the old version."""
        if node.path.parent is not None:
            self._listings.pop(node.path.parent, None)

    # ----- listings -------------------------------------------------------------------------

    def schemes(self) -> list[str]:
        names = ["s3"] if self.options.nofile else ["file", "s3"]
        if (
            self.config.gcs.credentials
            or self.config.gcs.defaults.project
            or os.environ.get("STORAGE_EMULATOR_HOST")
        ):
            names.append("gs")
        if self.config.azure.containers:
            names.append("azure")
        names += [scheme for scheme in urls.HTTP_SCHEMES if urls.http_roots(self.config, scheme)]
        return names

    async def listdir(self, node: Node) -> list[tuple[str, Entry]]:
        """The entries of a directory; `child` turns one into a node when it is handed out."""
        listing = self._listings.get(node.path)
        if listing is None or not self._listing_fresh(listing):
            with self._listing_on_its_way(node.path):
                if node.kind in (Kind.ROOT, Kind.VIRTUAL):
                    listing = await self._list_virtual(node)
                elif not (await self.store_for(node.parts))[0].listable:
                    listing = self._list_looked_up(node.path)
                else:
                    listing = await self._list_prefix(node.parts)
                await self._install_listing(node.path, listing)
        entries = [
            (name, Entry(node.path.child(name), known.kind, known.info, known.target))
            for name, known in listing.names.items()
            if known.kind is not None
        ]
        local = self._local.get(node.path)
        if local:
            entries += [
                (name, Entry(node.path.child(name), known.kind, known.info))
                for name, known in sorted(local.items())
                if known.kind is not None
                and (name not in listing.names or listing.names[name].kind is None)
            ]
        return entries

    @contextlib.contextmanager
    def _listing_on_its_way(self, path: MountPath) -> Iterator[None]:
        """Around the making and installing of a listing of `path`: changes the mount makes
        there meanwhile are kept for `_install_listing` (see `_learn`)."""
        self._listing_now[path] = self._listing_now.get(path, 0) + 1
        try:
            yield
        finally:
            self._listing_now[path] -= 1
            if not self._listing_now[path]:
                del self._listing_now[path]
                self._changed_while_listing.pop(path, None)

    async def _install_listing(self, path: MountPath, listing: _Listing) -> None:
        await self._apply_direct(path, listing)
        # a file saved through the mount while the LIST was on its way may be missing from
        # it (and no longer shown as a local file): what the mount did since counts
        for name, known in self._changed_while_listing.get(path, {}).items():
            if known.at > listing.at:
                if known.kind is None:
                    listing.names.pop(name, None)
                else:
                    listing.names[name] = known
        if listing.complete:
            self._listings[path] = listing
        for name, known in listing.names.items():
            self._remember_unless_newer(path.child(name), known)

    def _list_looked_up(self, path: MountPath) -> _Listing:
        """A directory of a server without listings: the names looked up in it that are still
        known (within the TTLs). Never kept as a listing, so new lookups show at once."""
        names = {}
        looked_up = self._looked_up.get(path, set())
        for name in sorted(looked_up):
            known = self._fresh(path.child(name))
            if known is None:
                looked_up.discard(name)
            elif known.kind is not None:
                names[name] = known
        return _Listing(names, time.monotonic(), complete=False)

    def _list_ahead(self, path: MountPath) -> None:
        """After a lookup miss in a directory: list it in the background, so the lookups of
        its siblings (a job opening many files of one folder) need no request at all."""
        if self._nursery is None or path in self._listing_ahead or path in self._too_big:
            return
        self._listing_ahead.add(path)
        self._nursery.start_soon(self._list_ahead_task, path)

    async def _list_ahead_task(self, path: MountPath) -> None:
        try:
            with self._listing_on_its_way(path):
                listing = await self._list_prefix(path.parts, max_pages=_LIST_AHEAD_PAGES)
                await self._install_listing(path, listing)
            if not listing.complete:
                self._too_big.add(path)  # its lookups go to the server, one by one
        except StoreError as exc:
            log.debug("listing ahead %s failed: %s", path, exc)
        finally:
            self._listing_ahead.discard(path)

    def _anchored(self, parts: tuple[str, ...]) -> bool:
        """Whether a direct-access rule names a place at or below `parts` (shown even when
        its server is unlisted: reaching it contacts no server)."""
        if not self._remote_rules:
            return False
        for anchor in self.direct.anchors():
            try:
                anchor_parts = tuple(urls.url_to_path(anchor.rstrip("/")).split("/"))
            except ValueError:
                continue
            if anchor_parts[: len(parts)] == parts:
                return True
        return False

    async def _apply_direct(self, path: MountPath, listing: _Listing) -> None:
        """Turn listed entries that are direct into symlinks, and add the places rules name
        (an "archive" bucket that only exists on NFS) to the level they sit in."""
        if not self._remote_rules:
            return
        parts = path.parts
        if parts == ("file",):
            return
        for anchor in self.direct.anchors():
            try:
                anchor_parts = tuple(urls.url_to_path(anchor.rstrip("/")).split("/"))
            except ValueError:
                continue
            if anchor_parts[:-1] == parts:
                listing.names.setdefault(anchor_parts[-1], _Known(Kind.DIR, None, listing.at))
        for name in list(listing.names):
            direct = await self._direct((*parts, name))
            if direct is not None:
                listing.names[name] = direct

    def child(self, entry: Entry) -> Node:
        """The node of a listed entry (lookup count untouched; see `drop_if_unused`)."""
        return self._node(entry.path, entry.kind, entry.info, entry.target)

    async def _list_virtual(self, node: Node) -> _Listing:
        now = time.monotonic()
        parts = node.parts
        s3, az, gcs = self.config.s3, self.config.azure, self.config.gcs
        dirs: list[str] = []
        virtual: list[str] = []
        if not parts:
            virtual = self.schemes()
        elif parts == ("s3",):
            for name in urls.s3_roots(s3):
                (virtual if self._is_s3_host(name) else dirs).append(name)
        elif parts[0] == "s3":
            dirs = list(urls.s3_host_buckets(s3, parts[1]))
            if not dirs or any(e.host == parts[1] and not e.bucket for e in s3.credentials):
                dirs += await self._containers(parts)
        elif parts == ("gs",):
            dirs = list(urls.gcs_roots(gcs))
        elif parts[0] in urls.HTTP_SCHEMES:
            dirs = list(urls.http_roots(self.config, parts[0]))
        elif parts == ("azure",):
            virtual = list(urls.azure_roots(az))
        elif parts[0] == "azure":
            dirs = list(urls.azure_account_containers(az, parts[1]))
            if not dirs or any(not c.container_name for c in az.containers):
                dirs += await self._containers(parts)
        elif parts == ("file",):
            return await self._list_local_root(now)
        names = {name: _Known(Kind.VIRTUAL, None, now) for name in virtual}
        names.update({name: _Known(Kind.DIR, None, now) for name in dirs if showable(name)})
        return _Listing(dict(sorted(names.items())), now)

    async def _list_local_root(self, now: float) -> _Listing:
        """`file/` shows the top of the local tree, each entry a symlink to itself."""
        names = await self.transfer.metadata(os.listdir, "/")
        return _Listing(
            {name: _Known(Kind.SYMLINK, None, now, "/" + name) for name in sorted(names)}, now
        )

    async def _containers(self, parts: tuple[str, ...]) -> list[str]:
        url = self.url_of(parts)  # a host or account: its bucket/container is ""
        if not self.may_contact(url.scheme, url.host):
            return []  # a host only a direct-access rule names: it shows that rule's places
        try:
            return await self.transfer.metadata(
                backends.list_containers,
                url,
                self.config,
                deadline=backends.deadlines(url, self.config).operation,
                url=f"{url.scheme}://{url.host}",
            )
        except StoreError as exc:
            log.warning("cannot list buckets under %s: %s", "/".join(parts), exc)
            return []

    async def _list_prefix(self, parts: tuple[str, ...], max_pages: int | None = None) -> _Listing:
        store, key = await self.store_for(parts)
        prefix = key + "/" if key else ""
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        skipped: list[str] = []
        token: str | None = None
        pages = 0
        seen_tokens: set[str] = set()
        # what the listing says is as old as its start: a HEAD answered meanwhile is newer
        started = time.monotonic()
        while True:
            if max_pages is not None and pages == max_pages:
                break
            pages += 1
            page = await self._ask(store, store.list_page, prefix, token)
            for info in page.objects:
                name = info.key[len(prefix) :]
                if name == "":
                    continue  # the "directory marker" object of this prefix itself
                if showable(name):
                    files[name] = info
                else:
                    skipped.append(info.key)
            for child in page.prefixes:
                name = child[len(prefix) :].removesuffix("/")
                if showable(name):
                    dirs.add(name)
                else:
                    skipped.append(child)
            if page.next_token is not None and page.next_token in seen_tokens:
                # a server whose continuation tokens cycle would be listed forever
                raise Unavailable("the listing's continuation tokens repeat", store.base_url)
            token = page.next_token
            if token is None:
                break
            seen_tokens.add(token)
        for name in dirs & files.keys():
            skipped.append(files.pop(name).key)
        if skipped:
            log.warning(
                "skipped %d key(s) under %s that cannot be shown as files (e.g. %r)",
                len(skipped),
                store.base_url + "/" + prefix,
                skipped[0],
            )
        names = {name: _Known(Kind.DIR, None, started) for name in dirs}
        names.update({name: _Known(Kind.FILE, info, started) for name, info in files.items()})
        return _Listing(dict(sorted(names.items())), started, skipped, complete=token is None)

    # ----- changes made through the mount (-o writable) --------------------------------------

    def add_local(self, parent: Node, name: str, info: ObjectInfo | None) -> Node:
        """A file being written (`info`: its provisional version) or a directory made by
        mkdir (`info` None): shown under `parent` until it is settled or removed."""
        path = parent.path.child(name)
        known = _Known(Kind.FILE if info is not None else Kind.DIR, info, time.monotonic())
        self._local.setdefault(parent.path, {})[name] = known
        return self._node(path, known.kind, info)  # type: ignore[arg-type]

    def parent_of(self, node: Node) -> Node | None:
        """The node of `node`'s directory, if the kernel was given one."""
        return self._parent(node)

    def _drop_local(self, path: MountPath) -> None:
        parent = path.parent
        local = self._local.get(parent) if parent is not None else None
        if local is not None and path.name in local:
            del local[path.name]
            if not local and parent is not None:
                del self._local[parent]

    def is_local_dir(self, node: Node) -> bool:
        parent = node.path.parent
        local = self._local.get(parent) if parent is not None else None
        return bool(local and node.path.name in local and local[node.path.name].kind is Kind.DIR)

    def has_local_children(self, node: Node) -> bool:
        return bool(self._local.get(node.path))

    def settle(self, node: Node, info: ObjectInfo) -> None:
        """`node` now stands for the object version `info` the mount just wrote."""
        self._drop_local(node.path)
        self._by_key.pop(_identity(node.path, node.info, node.target), None)
        node.info = info
        node.validated_at = time.monotonic()
        self._by_key.setdefault(_identity(node.path, info, None), node.inode)
        self._learn(node.path, _Known(Kind.FILE, info, time.monotonic()))

    def moved(self, node: Node, parent: Node, name: str, info: ObjectInfo) -> None:
        """`node`'s object was renamed to `name` in `parent` (the kernel moves its inode
        along), where it is version `info`; whatever was there before is replaced."""
        self.removed(node)
        path = parent.path.child(name)
        self._drop_local(path)
        self._by_key.pop(_identity(node.path, node.info, node.target), None)
        node.path = path
        node.info = info
        node.validated_at = time.monotonic()
        self._by_key[_identity(path, info, None)] = node.inode
        self._learn(path, _Known(Kind.FILE, info, time.monotonic()))

    def removed(self, node: Node) -> None:
        """`node`'s object (or local directory) is gone."""
        self._drop_local(node.path)
        self._learn(node.path, _Known(None, None, time.monotonic()))

    def _learn(self, path: MountPath, known: _Known) -> None:
        """What the mount itself just did to `path`: remembered, and shown by the listing of
        its directory if one is kept."""
        self._remember(path, known)
        parent = path.parent
        if parent in self._listing_now:
            self._changed_while_listing.setdefault(parent, {})[path.name] = known
        listing = self._listings.get(parent) if parent is not None else None
        if listing is not None:
            if known.kind is None:
                listing.names.pop(path.name, None)
            else:
                listing.names[path.name] = known
