"""openpi's msgpack-numpy wire format, re-exported from the torch-free client package (one implementation)."""

from latentvla.client.msgpack_numpy import Packer, pack_array, packb, unpack_array, unpackb

__all__ = ["Packer", "pack_array", "packb", "unpack_array", "unpackb"]
