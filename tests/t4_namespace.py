"""The namespace without a kernel or a server: lookups, listings, their time-to-live, the
negative cache, one inode per object version and forget, against a bucket in memory.

TTLs are shown with two settings instead of waiting: 0 (every answer has expired) and 60 s
(none expires during a test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clearmount.errors import NotFound, Stale
from clearmount.namespace import Kind, Namespace, Node
from memstore import MemoryStore, make_namespace

OBJECTS = {
    "dir/a.bin": b"a" * 100,
    "dir/b.bin": b"b" * 200,
    "dir/sub/c.bin": b"c",
    "top.txt": b"top",
}


def bucket(**extra: bytes) -> MemoryStore:
    return MemoryStore({**OBJECTS, **extra}, base_url="s3://bucket")


async def walk(namespace: Namespace, path: str) -> Node | None:
    """Look `path` up one component at a time, as the kernel does."""
    node: Node | None = namespace.root
    for name in path.split("/"):
        assert node is not None
        node = await namespace.lookup(node, name)
        if node is None:
            return None
    return node


async def must_walk(namespace: Namespace, path: str) -> Node:
    node = await walk(namespace, path)
    assert node is not None, path
    return node


async def names(namespace: Namespace, path: str) -> list[tuple[str, Kind]]:
    node = namespace.root if not path else await must_walk(namespace, path)
    return [(name, entry.kind) for name, entry in await namespace.listdir(node)]


async def test_each_level_of_a_path_is_what_the_config_and_the_bucket_say(tmp_path: Path) -> None:
    namespace = make_namespace(tmp_path, bucket())
    assert await names(namespace, "") == [("s3", Kind.VIRTUAL)]
    assert await names(namespace, "s3") == [("bucket", Kind.DIR)]
    assert await names(namespace, "s3/bucket") == [("dir", Kind.DIR), ("top.txt", Kind.FILE)]
    assert await names(namespace, "s3/bucket/dir") == [
        ("a.bin", Kind.FILE),
        ("b.bin", Kind.FILE),
        ("sub", Kind.DIR),
    ]
    node = await must_walk(namespace, "s3/bucket/dir/b.bin")
    assert node.kind is Kind.FILE and node.info is not None and node.info.size == 200
    assert namespace.url_string(node) == "s3://bucket/dir/b.bin"
    assert await walk(namespace, "s3/bucket/dir/missing") is None
    assert await walk(namespace, "gs") is None  # no Google Cloud Storage configured
    assert await walk(namespace, "s3/bucket/top.txt/below") is None  # a file has no children


async def test_a_lookup_is_answered_from_memory_for_attr_timeout(tmp_path: Path) -> None:
    for timeout, asked in ((60.0, 1), (0.0, 3)):
        store = bucket()
        namespace = make_namespace(tmp_path, store, attr_timeout=timeout)
        directory = await must_walk(namespace, "s3/bucket/dir")
        heads = store.requests["head"]
        found = [await namespace.lookup(directory, "a.bin") for _ in range(3)]
        assert store.requests["head"] == heads + asked, timeout
        assert len({node.inode for node in found if node is not None}) == 1  # one version


async def test_a_missing_name_is_remembered_for_negative_timeout(tmp_path: Path) -> None:
    for timeout, found in ((60.0, False), (0.0, True)):
        store = bucket()
        namespace = make_namespace(tmp_path, store, negative_timeout=timeout)
        assert await walk(namespace, "s3/bucket/dir/new.bin") is None
        heads = store.requests["head"]
        store.put("dir/new.bin", b"uploaded a moment later")
        assert (await walk(namespace, "s3/bucket/dir/new.bin") is not None) is found, timeout
        # remembered: the server is not asked again
        assert store.requests["head"] == heads + (1 if found else 0)


async def test_a_listing_is_reused_for_dir_timeout_and_answers_the_names_it_saw(
    tmp_path: Path,
) -> None:
    store = bucket()
    namespace = make_namespace(tmp_path, store, dir_timeout=60.0)
    directory = await must_walk(namespace, "s3/bucket/dir")
    before = await namespace.listdir(directory)
    lists = store.requests["list"]
    store.put("dir/later.bin", b"listed at the next listing only")
    assert await namespace.listdir(directory) == before
    assert store.requests["list"] == lists
    # the names the listing saw need no request; one it did not see is asked for
    heads = store.requests["head"]
    await must_walk(namespace, "s3/bucket/dir/a.bin")
    assert store.requests["head"] == heads
    assert await walk(namespace, "s3/bucket/dir/later.bin") is not None
    assert store.requests["head"] == heads + 1

    expired = make_namespace(tmp_path, store, dir_timeout=0.0)
    assert ("later.bin", Kind.FILE) in await names(expired, "s3/bucket/dir")


async def test_a_listing_reads_every_page_and_skips_what_cannot_be_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = bucket(**{"dir/sub": b"a key beside keys dir/sub/...", "dir//double": b"x"})
    store.page_size = 2
    namespace = make_namespace(tmp_path, store)
    assert await names(namespace, "s3/bucket/dir") == [
        ("a.bin", Kind.FILE),
        ("b.bin", Kind.FILE),
        ("sub", Kind.DIR),  # the directory wins over the key of the same name
    ]
    assert store.requests["list"] > 2  # several pages
    assert "skipped 2 key(s) under s3://bucket/dir/" in caplog.text


async def test_each_object_version_is_its_own_inode(tmp_path: Path) -> None:
    store = bucket()
    namespace = make_namespace(tmp_path, store, attr_timeout=0.0)
    old = await must_walk(namespace, "s3/bucket/dir/a.bin")
    old.lookups += 1  # the kernel holds it
    assert (await must_walk(namespace, "s3/bucket/dir/a.bin")).inode == old.inode
    store.put("dir/a.bin", b"replaced")
    new = await must_walk(namespace, "s3/bucket/dir/a.bin")
    assert new.inode != old.inode
    assert new.info is not None and new.info.size == len(b"replaced")
    # the old version stays what its inode stands for while the kernel holds it
    assert namespace.get(old.inode) is old
    assert old.info is not None and old.info.size == 100


async def test_forget_drops_a_node_once_the_kernel_holds_no_reference(tmp_path: Path) -> None:
    namespace = make_namespace(tmp_path, bucket())
    node = await must_walk(namespace, "s3/bucket/top.txt")
    node.lookups += 2
    count = namespace.node_count
    namespace.forget(node.inode, 1)
    assert namespace.get(node.inode) is node
    namespace.forget(node.inode, 1)
    with pytest.raises(NotFound):
        namespace.get(node.inode)
    assert namespace.node_count == count - 1
    namespace.forget(namespace.root.inode, 10)  # the root is never forgotten
    assert namespace.get(namespace.root.inode) is namespace.root
    # looked up again: a node again, a new inode number
    assert (await must_walk(namespace, "s3/bucket/top.txt")).inode != node.inode


async def test_an_open_revalidates_after_attr_timeout_and_invalidate_forces_it(
    tmp_path: Path,
) -> None:
    store = bucket()
    namespace = make_namespace(tmp_path, store, attr_timeout=60.0)
    node = await must_walk(namespace, "s3/bucket/dir/a.bin")
    store.put("dir/a.bin", b"changed on the server")
    await namespace.revalidate(node)  # trusted for attr_timeout: not asked
    assert (await must_walk(namespace, "s3/bucket/dir/a.bin")).inode == node.inode
    namespace.invalidate(node)  # what a read that met the new version does
    with pytest.raises(Stale, match="object changed since it was looked up"):
        await namespace.revalidate(node)
    assert (await must_walk(namespace, "s3/bucket/dir/a.bin")).inode != node.inode
    store.delete("dir/a.bin")
    namespace.invalidate(node)
    with pytest.raises(NotFound):
        await namespace.revalidate(node)


async def test_a_files_store_and_url_hold_for_its_path_until_a_reload(tmp_path: Path) -> None:
    opened: list[str] = []
    namespace = make_namespace(tmp_path, bucket(), opened=opened)
    node = await must_walk(namespace, "s3/bucket/dir/a.bin")
    store, url = await namespace.object_of(node)
    assert url == "s3://bucket/dir/a.bin" and opened == ["s3://bucket"]
    # the kernel forgot the inode and looks the path up again (a new node): same answer
    node.lookups += 1
    namespace.forget(node.inode, 1)
    again = await must_walk(namespace, "s3/bucket/dir/a.bin")
    assert again is not node
    assert await namespace.object_of(again) == (store, url)
    # a reload (new credentials, endpoints) opens the store anew for the next open
    namespace.reload(namespace.config, namespace.direct)
    assert (await namespace.object_of(again))[1] == url
    assert opened == ["s3://bucket", "s3://bucket"]


async def test_an_endpoint_the_config_does_not_name_is_never_contacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # make_namespace's store opener fails the test for any store but s3://bucket
    namespace = make_namespace(tmp_path, bucket())
    s3 = await must_walk(namespace, "s3")
    assert await namespace.lookup(s3, "10.0.0.5:9000") is None
    assert "s3/10.0.0.5:9000: endpoint not in clearml.conf, not contacted" in caplog.text


@pytest.mark.parametrize("name", ["bucket", "minio:9000", "minio:abc", "Minio:9000"])
def test_the_namespace_and_the_urls_agree_on_which_s3_names_are_hosts(
    tmp_path: Path, name: str
) -> None:
    # one rule (urls.is_s3_host): the bucket root the namespace finds in a path is the store
    # its URL names, so "s3/minio:abc/k" is bucket "minio:abc", not a host with bucket "k"
    namespace = make_namespace(tmp_path, bucket())
    parts = ("s3", name, "first", "key")
    depth = namespace.container_depth(parts)
    assert str(namespace.url_of(parts[:depth])) == namespace.url_of(parts).base_url
