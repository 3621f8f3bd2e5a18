"""Safe extraction of model archives: formats, hostile members, limits, corruption."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from synapse_sdk.errors import SynapseError
from synapse_sdk.models import (
    ArchiveFormat,
    ArchiveLimitError,
    CorruptArchiveError,
    ExtractionLimits,
    UnsafeArchiveError,
    UnsupportedArchiveError,
    detect_archive_format,
    extract_archive,
    inspect_archive,
    pack_path,
)

from tests.models._archives import link_info, make_tar, make_zip

FILES = [("model.pt", b"weights" * 100), ("cfg/config.json", b'{"a": 1}')]


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar_gz"])
def test_extracts_each_format(tmp_path: Path, fmt: str) -> None:
    if fmt == "zip":
        archive = make_zip(tmp_path / "m.zip", FILES)
    else:
        archive = make_tar(tmp_path / "m.tar", FILES, gz=fmt == "tar_gz")
    assert detect_archive_format(archive) is ArchiveFormat(fmt)
    out = extract_archive(archive, tmp_path / "out", fmt)
    assert (out / "model.pt").read_bytes() == b"weights" * 100
    assert (out / "cfg" / "config.json").read_text() == '{"a": 1}'
    assert inspect_archive(archive) == (ArchiveFormat(fmt), 2, 700 + 8)


def test_declared_format_must_match_content(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "m.zip", FILES)
    with pytest.raises(UnsupportedArchiveError, match=r"declared as tar_gz but the content is zip"):
        extract_archive(archive, tmp_path / "out", "tar_gz")


def test_unknown_format_and_non_archive(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchiveError, match=r"unsupported archive format 'rar'"):
        ArchiveFormat.parse("rar")
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(UnsupportedArchiveError, match=r"not a zip, tar or tar.gz"):
        extract_archive(junk, tmp_path / "out")
    assert issubclass(UnsupportedArchiveError, SynapseError)


@pytest.mark.parametrize(
    ("name", "why"),
    [("../evil.txt", r"escapes"), ("/etc/evil.txt", "absolute"), ("a/../../evil", "escapes")],
)
@pytest.mark.parametrize("fmt", ["zip", "tar_gz"])
def test_rejects_escaping_names(tmp_path: Path, name: str, why: str, fmt: str) -> None:
    members = [("ok.txt", b"x"), (name, b"evil")]
    archive = (
        make_zip(tmp_path / "m.zip", members)
        if fmt == "zip"
        else make_tar(tmp_path / "m.tgz", members, gz=True)
    )
    with pytest.raises(UnsafeArchiveError, match=why):
        extract_archive(archive, tmp_path / "out" / "deep")
    with pytest.raises(UnsafeArchiveError):
        inspect_archive(archive)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_rejects_symlink_outside_and_write_through_link(tmp_path: Path) -> None:
    outside = make_tar(tmp_path / "a.tar", [link_info("l", "../../x", tarfile.SYMTYPE)], gz=False)
    with pytest.raises(UnsafeArchiveError, match=r"points outside"):
        extract_archive(outside, tmp_path / "out1")
    absolute = make_tar(tmp_path / "b.tar", [link_info("l", "/etc", tarfile.SYMTYPE)], gz=False)
    with pytest.raises(UnsafeArchiveError, match=r"absolute|points to"):
        extract_archive(absolute, tmp_path / "out2")
    # A link to the root itself is inside, but a relative link from it must not climb out.
    climb = make_tar(
        tmp_path / "c.tar",
        [link_info("d", ".", tarfile.SYMTYPE), link_info("d/l", "../secret", tarfile.SYMTYPE)],
        gz=False,
    )
    with pytest.raises(UnsafeArchiveError):
        extract_archive(climb, tmp_path / "out3")
    hard_link = link_info("h", "../../etc/passwd", tarfile.LNKTYPE)
    hard = make_tar(tmp_path / "d.tar", [hard_link], gz=False)
    with pytest.raises(UnsafeArchiveError):
        extract_archive(hard, tmp_path / "out4")
    zipped = make_zip(tmp_path / "e.zip", [("a", b"1")], symlinks={"l": "../../etc"})
    with pytest.raises(UnsafeArchiveError, match=r"points outside"):
        extract_archive(zipped, tmp_path / "out5")


def test_allows_links_inside_and_copies_hardlinks(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "m.tar",
        [
            ("weights/w.bin", b"123"),
            link_info("model.bin", "weights/w.bin", tarfile.SYMTYPE),
            link_info("copy.bin", "weights/w.bin", tarfile.LNKTYPE),
        ],
        gz=False,
    )
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "model.bin").read_bytes() == b"123"
    assert os.path.islink(out / "model.bin")
    assert (out / "copy.bin").read_bytes() == b"123"
    assert not os.path.islink(out / "copy.bin")


def test_rejects_device_and_fifo(tmp_path: Path) -> None:
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        info = tarfile.TarInfo("dev")
        info.type = kind
        archive = make_tar(tmp_path / f"{kind!r}.tar", [info], gz=False)
        with pytest.raises(UnsafeArchiveError, match=r"device, FIFO"):
            extract_archive(archive, tmp_path / "out")


def test_size_and_member_limits(tmp_path: Path) -> None:
    bomb = make_tar(tmp_path / "bomb.tgz", [("zeros.bin", b"\0" * 2_000_000)], gz=True)
    assert bomb.stat().st_size < 20_000
    with pytest.raises(ArchiveLimitError, match=r"uncompressed size exceeds 1000000"):
        extract_archive(bomb, tmp_path / "out", limits=ExtractionLimits(max_total_bytes=1_000_000))
    zbomb = make_zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * 2_000_000)])
    with pytest.raises(ArchiveLimitError):
        inspect_archive(zbomb, limits=ExtractionLimits(max_total_bytes=1_000_000))
    many = make_zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(11)])
    with pytest.raises(ArchiveLimitError, match=r"more than 10 members"):
        extract_archive(many, tmp_path / "out2", limits=ExtractionLimits(max_members=10))


def test_corrupt_archives(tmp_path: Path) -> None:
    good_zip = make_zip(tmp_path / "m.zip", [("model.pt", os.urandom(50_000))])
    data = bytearray(good_zip.read_bytes())
    data[100:200] = b"\0" * 100  # damage the compressed payload, keep the headers
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match=r"bad.zip: corrupt zip"):
        extract_archive(bad_zip, tmp_path / "out")

    good_tgz = make_tar(tmp_path / "m.tgz", [("model.pt", os.urandom(50_000))], gz=True)
    truncated = tmp_path / "trunc.tgz"
    truncated.write_bytes(good_tgz.read_bytes()[: good_tgz.stat().st_size // 2])
    with pytest.raises(CorruptArchiveError, match=r"trunc.tgz: corrupt tar_gz"):
        inspect_archive(truncated)

    headless = tmp_path / "head.zip"
    headless.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(CorruptArchiveError):
        extract_archive(headless, tmp_path / "out2")


def test_pack_path(tmp_path: Path) -> None:
    src = tmp_path / "mymodel"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"w")
    (src / "sub" / "x.txt").write_text("x")
    archive, fmt = pack_path(src, tmp_path)
    assert fmt is ArchiveFormat.TAR_GZ
    out = extract_archive(archive, tmp_path / "out", fmt)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "model.pt",
        "sub",
        "sub/x.txt",
    ]
    assert pack_path(archive, tmp_path) == (archive, ArchiveFormat.TAR_GZ)
    with pytest.raises(UnsupportedArchiveError, match=r"pass a model directory"):
        pack_path(src / "model.pt", tmp_path)
    fake = tmp_path / "fake.zip"
    fake.write_bytes(archive.read_bytes())
    with pytest.raises(UnsupportedArchiveError, match=r"named like a zip archive"):
        pack_path(fake, tmp_path)
    with pytest.raises(FileNotFoundError):
        pack_path(tmp_path / "missing", tmp_path)
