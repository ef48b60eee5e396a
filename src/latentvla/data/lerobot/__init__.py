"""LeRobotDataset on disk: a v3.0 writer and a v3.0 / v2.1 reader, numpy + pyarrow only (+ PyAV for video).

columns.py   per-frame columns: info.json feature specs, Arrow encoding / decoding, episode checks
layout.py    where files live, one layout object per format version (v3.0, v2.1)
reader.py    `LeRobotDatasetReader`
writer.py    `DatasetWriter` (atomic, resumable)
"""

from latentvla.data.errors import DatasetFormatError
from latentvla.data.lerobot.reader import LeRobotDatasetReader
from latentvla.data.lerobot.writer import DatasetWriter

__all__ = ["DatasetFormatError", "DatasetWriter", "LeRobotDatasetReader"]
