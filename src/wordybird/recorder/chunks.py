"""A step's chunks, encoded straight from the step's arrays and handed to the store whole.

The writer's CPU should go to the codec and nothing else. zarr-python's own write path
assembles every chunk into a fresh buffer (a fill, then a copy), copies it again in the
checksum codec, and passes each chunk through its event loop and a thread pool. Here each
chunk of a big field is a view of the step's array (the last one, shorter, is copied into
a padded buffer: chunks are stored at full size), compressed once by the array's own
codec, its crc32c computed over the compressed bytes, and both handed to the store's
``put`` as two buffers, written with one ``writev``: the bytes any Zarr v3 reader expects
from the array's ``bytes → blosc|zstd → crc32c`` codecs (tests check that zarr and
TensorStore read them bit for bit).

Compression runs on a pool of ``threads`` threads (blosc and zstd release the GIL), or in
the writer's own thread when ``threads`` is 1: a CPU-bound run wants one core for the
writer, a GPU run all that the host has (``knobs.codec_threads``).
"""

from __future__ import annotations

import ctypes
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import crc32c
import numcodecs
import numpy as np
import zarr

from wordybird import knobs
from wordybird.errors import WordybirdError
from wordybird.storage import RecordingDisk

_SHUFFLES = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE}
_SHUFFLES["bitshuffle"] = numcodecs.Blosc.BITSHUFFLE
_CRC = struct.Struct("<I")
#: Bytes blosc may add to a chunk (its header, and a raw copy when nothing compresses).
_BLOSC_OVERHEAD = 16


def _blosc_compress_ctx() -> Callable[..., int] | None:
    """c-blosc's ``blosc_compress_ctx``, from the blosc library numcodecs is built with.

    numcodecs' ``Blosc.encode`` returns a fresh ``bytes`` per chunk: at 2 MB a chunk the
    allocator hands out newly mapped pages each time, and faulting them in cost as much CPU
    as the compression itself (benchmarks/bench_writer.py). Called directly, blosc compresses
    into a buffer each codec thread keeps for the run; ctypes releases the GIL meanwhile.
    The bytes are those of ``Blosc.encode`` (the same library and arguments). None where the
    library does not export the function (tests/test_recorder.py says so loudly).
    """
    try:
        function = ctypes.CDLL(numcodecs.blosc.__file__).blosc_compress_ctx
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,  # clevel
        ctypes.c_int,  # doshuffle
        ctypes.c_size_t,  # typesize
        ctypes.c_size_t,  # nbytes
        ctypes.c_void_p,  # src
        ctypes.c_void_p,  # dest
        ctypes.c_size_t,  # destsize
        ctypes.c_char_p,  # compressor
        ctypes.c_size_t,  # blocksize
        ctypes.c_int,  # numinternalthreads
    ]
    function.restype = ctypes.c_int
    return function


BLOSC_COMPRESS_CTX = _blosc_compress_ctx()


@dataclass(frozen=True)
class _BloscIntoBuffer:
    """blosc with the arguments of an array's codec, into a per-thread reused buffer."""

    cname: bytes
    clevel: int
    shuffle: int
    blocksize: int
    typesize: int
    compress: Callable[..., int]
    _buffers: threading.local = field(default_factory=threading.local, compare=False)

    def encode(self, data: np.ndarray) -> memoryview:
        """The compressed chunk, a view of this thread's buffer (valid until the thread's
        next encode)."""
        size = data.nbytes + _BLOSC_OVERHEAD
        buffer = getattr(self._buffers, "out", None)
        if buffer is None or len(buffer) < size:
            buffer = self._buffers.out = np.empty(size, np.uint8)
        written = self.compress(
            self.clevel,
            self.shuffle,
            self.typesize,
            data.nbytes,
            data.ctypes.data,
            buffer.ctypes.data,
            size,
            self.cname,
            self.blocksize,
            1,
        )
        if written <= 0:
            raise WordybirdError(f"blosc could not compress a chunk (error {written})")
        return memoryview(buffer)[:written]


@dataclass(frozen=True)
class ChunkCodec:
    """An array's codec chain as one encoding function (the chain its ``zarr.json`` names:
    the bytes codec, little-endian, then blosc or zstd, then crc32c)."""

    compressor: numcodecs.abc.Codec | _BloscIntoBuffer
    typesize: int  # the compressor sees the chunk as unsigned integers of this size

    @classmethod
    def of(cls, array: zarr.AsyncArray) -> ChunkCodec:
        """The codec of ``array``; refused unless it is a chain this writer produces."""
        chain = [codec.to_dict() for codec in array.metadata.codecs]
        names = [codec["name"] for codec in chain]
        endian = chain[0].get("configuration", {}).get("endian") if chain else None
        if names[0:1] != ["bytes"] or endian != "little" or names[2:] != ["crc32c"]:
            raise WordybirdError(f"cannot append to an array whose codecs are {names}")
        inner = chain[1] if len(chain) == 3 else {"name": None}
        config = inner.get("configuration", {})
        if inner["name"] == "blosc":
            typesize = int(config["typesize"])
            arguments = {
                "cname": config["cname"],
                "clevel": int(config["clevel"]),
                "shuffle": _SHUFFLES[config["shuffle"]],
                "blocksize": int(config.get("blocksize", 0)),
            }
            if BLOSC_COMPRESS_CTX is None:
                return cls(numcodecs.Blosc(**arguments), typesize)
            cname = arguments.pop("cname").encode()
            return cls(
                _BloscIntoBuffer(
                    cname, **arguments, typesize=typesize, compress=BLOSC_COMPRESS_CTX
                ),
                typesize,
            )
        if inner["name"] == "zstd":
            compressor = numcodecs.Zstd(
                level=int(config["level"]), checksum=bool(config.get("checksum"))
            )
            return cls(compressor, array.metadata.dtype.to_native_dtype().itemsize)
        raise WordybirdError(f"cannot append to an array whose codecs are {names}")

    def encode(self, chunk: np.ndarray) -> list[memoryview]:
        """The chunk as stored: the compressed bytes, then their crc32c (little-endian). The
        first view may be of a buffer the calling thread reuses for its next chunk."""
        data = _little_endian(chunk).view(np.dtype(f"u{self.typesize}")).reshape(-1)
        compressed = memoryview(self.compressor.encode(data))
        return [compressed, memoryview(_CRC.pack(crc32c.crc32c(compressed)))]


def _little_endian(chunk: np.ndarray) -> np.ndarray:
    """A contiguous little-endian copy of ``chunk``, or ``chunk`` itself when it is one."""
    chunk = np.ascontiguousarray(chunk)
    if chunk.dtype.byteorder == ">" or (chunk.dtype.byteorder == "=" and sys.byteorder == "big"):
        chunk = chunk.astype(chunk.dtype.newbyteorder("<"))
    return chunk


class FieldChunks:
    """Where one array's step goes: its chunks' keys and contents at a position.

    A big field has one step per chunk, cut along its first axis; a small field shares a
    chunk among ``rows`` consecutive positions, kept here as it was last written, so that a
    step rewrites it without reading it back (after a resume or a truncation, the committed
    positions of the block are read from the store once).

    Args:
        array: the field's array (its chunk grid, key encoding and codecs are used).
        read_stored: the store's read of committed positions of this array.
    """

    def __init__(self, array: zarr.AsyncArray, read_stored: Callable[[slice], np.ndarray]) -> None:
        self.codec = ChunkCodec.of(array)
        self._metadata = array.metadata
        self._prefix = f"{array.path}/" if array.path else ""  # keys are the store's
        self._chunk = tuple(array.metadata.chunk_grid.chunk_shape)
        self._step_shape = tuple(array.shape[1:])
        self._dtype = array.metadata.dtype.to_native_dtype()
        self._read_stored = read_stored
        self._shared = self._chunk[0] > 1  # a small field: many positions per chunk
        # the padded last piece of a big field's step, or the block of a small field
        self._buffer = np.zeros(self._chunk if self._shared else self._chunk[1:], self._dtype)
        self._block: tuple[int, int] | None = None  # (block index, positions held)

    def chunks(self, position: int, value: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """(key, contents) of the chunks that hold ``value`` at ``position``."""
        if self._shared:
            yield self._block_key(position), self._block_with(position, value)
            return
        rows = self._chunk[1] if len(self._chunk) > 1 else 1
        trailing = (0,) * max(0, len(self._chunk) - 2)
        if not self._step_shape:  # a 0-d step over the small-field size cannot exist
            raise WordybirdError("a big field needs a per-step shape")
        for piece, start in enumerate(range(0, self._step_shape[0], rows)):
            part = value[start : start + rows]
            if len(part) < rows:  # the grid's last chunk: stored at full size, zero-filled
                self._buffer[: len(part)] = part
                self._buffer[len(part) :] = 0
                part = self._buffer
            yield self._key((position, piece, *trailing)), part

    def _key(self, coordinates: tuple[int, ...]) -> str:
        return self._prefix + self._metadata.encode_chunk_key(coordinates)

    def _block_key(self, position: int) -> str:
        return self._key((position // self._chunk[0], *(0,) * len(self._step_shape)))

    def _block_with(self, position: int, value: np.ndarray) -> np.ndarray:
        """The small field's block of ``position`` with ``value`` written at its row."""
        per_block = self._chunk[0]
        index, row = divmod(position, per_block)
        if self._block != (index, position):  # not the block as it was last written
            self._buffer[:] = 0
            if row:
                start = index * per_block
                self._buffer[:row] = self._read_stored(slice(start, position))
        self._buffer[row] = value
        self._block = (index, position + 1)
        return self._buffer


class ChunkWriter:
    """Encodes chunks and writes them to a store, on ``threads`` threads.

    A step's writes all end before :meth:`write` returns or raises (the first failure), so
    that none lands behind the back of a caller that already resumed or gave up.
    """

    def __init__(self, disk: RecordingDisk, threads: int) -> None:
        self._disk = disk
        #: CPU seconds the codec threads spent (the calling thread's own are not counted)
        self.pool_cpu_seconds = 0.0
        self._lock = threading.Lock()
        self._pool = None
        if threads > 1:
            self._pool = ThreadPoolExecutor(
                threads,
                thread_name_prefix="wordybird-codec",
                initializer=knobs.lower_this_threads_priority,
            )

    def write(self, chunks: Iterator[tuple[str, np.ndarray, ChunkCodec]]) -> None:
        """Encode and write every chunk."""
        if self._pool is None:
            for key, data, codec in chunks:
                self._put(key, data, codec)
            return
        futures = [self._pool.submit(self._put_on_pool, *chunk) for chunk in chunks]
        wait(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error

    def _put(self, key: str, data: np.ndarray, codec: ChunkCodec) -> None:
        self._disk.put(key, codec.encode(data))

    def _put_on_pool(self, key: str, data: np.ndarray, codec: ChunkCodec) -> None:
        start = time.thread_time()
        try:
            self._put(key, data, codec)
        finally:
            with self._lock:
                self.pool_cpu_seconds += time.thread_time() - start

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
